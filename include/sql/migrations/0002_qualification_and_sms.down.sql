DROP TABLE IF EXISTS sms_campaign_runs;
DROP TABLE IF EXISTS sms_messages;
DROP TABLE IF EXISTS sms_batches;
DROP TABLE IF EXISTS sms_notifications;
DROP TABLE IF EXISTS qualification_outcomes;
ALTER TABLE customers DROP COLUMN IF EXISTS phone_valid;
