ALTER TABLE daily_balance_checks DROP CONSTRAINT IF EXISTS daily_balance_checks_balance_present;
ALTER TABLE daily_balance_checks DROP COLUMN IF EXISTS balance_enc, DROP COLUMN IF EXISTS balance_key_id;
DROP TABLE IF EXISTS archived_partitions;
DROP TABLE IF EXISTS audit_trail;
DROP TABLE IF EXISTS system_events;
