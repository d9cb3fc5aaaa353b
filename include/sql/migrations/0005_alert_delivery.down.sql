DROP TABLE IF EXISTS integration_metrics;
DROP INDEX IF EXISTS alerts_kind_raised_at;
ALTER TABLE alerts
    DROP COLUMN IF EXISTS delivered_at,
    DROP COLUMN IF EXISTS delivery_error,
    DROP COLUMN IF EXISTS delivered_to;
