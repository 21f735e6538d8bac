-- The Docker hosts: one worker serves each and polls the host's own task queue. A host
-- heartbeats while its worker runs; one whose heartbeat is older than the configured limit is
-- `down`. `draining` is the operator's "no new games here", kept while the host is down.
CREATE TABLE hosts (
    id                text PRIMARY KEY,
    task_queue        text        NOT NULL,
    capacity          integer     NOT NULL CHECK (capacity > 0),
    labels            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state             text        NOT NULL DEFAULT 'active'
                                  CHECK (state IN ('active', 'draining', 'down')),
    draining          boolean     NOT NULL DEFAULT false,
    docker_host       text,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Every game lives on one host. Records from before hosts existed ran on the one Docker engine
-- of a one-host install, whose default host id is `local`.
ALTER TABLE runtime_records ADD COLUMN host_id text NOT NULL DEFAULT 'local';
CREATE INDEX runtime_records_host_status_idx ON runtime_records (host_id, status);
