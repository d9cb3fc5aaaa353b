DROP INDEX IF EXISTS sms_notifications_pii_key_id;
DROP INDEX IF EXISTS daily_balance_checks_balance_key_id;
DROP TABLE IF EXISTS late_send_authorisations;
