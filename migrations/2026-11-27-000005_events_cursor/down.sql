ALTER TABLE hosts DROP COLUMN events_since_ns;
