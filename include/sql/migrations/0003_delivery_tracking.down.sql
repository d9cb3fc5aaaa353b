UPDATE sms_notifications SET status = 'QUEUED' WHERE status = 'NO_STATUS';
ALTER TABLE sms_notifications DROP CONSTRAINT sms_notifications_status_check;
ALTER TABLE sms_notifications ADD CONSTRAINT sms_notifications_status_check CHECK (status IN (
    'PENDING', 'SUBMITTED', 'QUEUED', 'SENT', 'DELIVERED', 'FAILED', 'UNDELIVERABLE', 'UNCONFIRMED'));
DROP TABLE IF EXISTS delivery_tracking_runs;
DROP TABLE IF EXISTS webhook_events;
DROP TABLE IF EXISTS delivery_status_history;
DROP TABLE IF EXISTS delivery_status;
