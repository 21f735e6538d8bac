-- Where each host's Docker events watcher stopped reading (Docker's event time, Unix
-- nanoseconds): a restarted watcher resumes there with `since`, so no event is lost.
ALTER TABLE hosts ADD COLUMN events_since_ns bigint;
