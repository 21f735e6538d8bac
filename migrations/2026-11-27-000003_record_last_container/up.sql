-- The container the last write acted on. A removal clears `current_container_id` (a removed
-- record has no container); an operation re-run after a crash still has to name the container
-- it found in its health event and audit row.
ALTER TABLE runtime_records ADD COLUMN last_container_id text;
