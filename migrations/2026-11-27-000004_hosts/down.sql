DROP INDEX runtime_records_host_status_idx;
ALTER TABLE runtime_records DROP COLUMN host_id;
DROP TABLE hosts;
