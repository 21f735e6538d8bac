-- How a stop that reached Docker ended: the signal it sent, the seconds it waited, and
-- whether the process exited within them (`graceful`) or was killed (`killed`). Null on rows
-- of operations that stopped no running container.
ALTER TABLE operation_log
    ADD COLUMN stop_signal text,
    ADD COLUMN stop_timeout_secs integer,
    ADD COLUMN stop_ended text;
