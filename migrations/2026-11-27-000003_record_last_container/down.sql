ALTER TABLE runtime_records DROP COLUMN last_container_id;
