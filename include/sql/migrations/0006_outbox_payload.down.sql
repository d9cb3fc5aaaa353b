ALTER TABLE sms_messages RESET (fillfactor);
ALTER TABLE sms_notifications RESET (fillfactor);
CREATE UNIQUE INDEX IF NOT EXISTS sms_messages_tracking ON sms_messages (carrier, tracking_id) WHERE tracking_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sms_notifications_status ON sms_notifications (campaign_id, status);
ALTER TABLE sms_notifications
    DROP CONSTRAINT IF EXISTS sms_notifications_payload,
    DROP COLUMN IF EXISTS content_enc,
    DROP COLUMN IF EXISTS phone_enc,
    DROP COLUMN IF EXISTS pii_key_id;
