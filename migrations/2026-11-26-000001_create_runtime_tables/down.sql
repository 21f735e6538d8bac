DROP TABLE health_snapshots;
DROP TABLE operation_log;
DROP TABLE runtime_records;
