-- The lease fence of the operation that last wrote the record: a write carrying a lower fence
-- (a holder whose lease expired) is refused.
ALTER TABLE runtime_records ADD COLUMN fence bigint NOT NULL DEFAULT 0;
