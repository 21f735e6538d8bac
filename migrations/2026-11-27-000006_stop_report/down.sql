ALTER TABLE operation_log
    DROP COLUMN stop_signal,
    DROP COLUMN stop_timeout_secs,
    DROP COLUMN stop_ended;
