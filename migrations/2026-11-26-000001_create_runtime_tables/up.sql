-- The durable state rtmanager owns. Status and codes are plain text so that the workflow, not
-- the schema, decides what an unknown value means (the seed's "unsupported status" branch).

CREATE TABLE runtime_records (
    game_id              text PRIMARY KEY,
    status               text        NOT NULL,
    current_container_id text,
    current_image_ref    text,
    started_at           timestamptz,
    stopped_at           timestamptz,
    removed_at           timestamptz,
    last_op_at           timestamptz NOT NULL,
    -- The operation (workflow_id/run_id) that last wrote the row: makes a retried
    -- compare-and-swap recognise its own committed write.
    last_op_id           text
);

CREATE TABLE operation_log (
    id            bigserial PRIMARY KEY,
    -- workflow_id/run_id: one row per operation, whatever the retries.
    operation_id  text        NOT NULL UNIQUE,
    game_id       text        NOT NULL,
    op_kind       text        NOT NULL CHECK (op_kind IN ('start', 'stop', 'restart', 'patch')),
    op_source     text        NOT NULL,
    source_ref    text,
    image_ref     text,
    container_id  text,
    outcome       text        NOT NULL CHECK (outcome IN ('success', 'failure')),
    error_code    text CHECK (error_code IN ('invalid_request', 'not_found', 'conflict',
                                             'service_unavailable', 'internal', 'replay_no_op')),
    error_message text,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz
);

CREATE INDEX operation_log_game_started_idx ON operation_log (game_id, started_at);
CREATE INDEX operation_log_source_ref_idx ON operation_log (source_ref) WHERE source_ref IS NOT NULL;

CREATE TABLE health_snapshots (
    game_id      text PRIMARY KEY,
    container_id text,
    event_type   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
