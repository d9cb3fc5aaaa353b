ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_pkey;
DELETE FROM webhook_events a USING webhook_events b WHERE a.webhook_id = b.webhook_id AND a.carrier > b.carrier;
ALTER TABLE webhook_events ADD PRIMARY KEY (webhook_id);
ALTER TABLE webhook_events DROP COLUMN carrier;
UPDATE delivery_status SET status_rank = 30 WHERE status = 'Delivered';
ALTER TABLE delivery_tracking_runs DROP COLUMN check_dates;
ALTER TABLE sms_notifications DROP COLUMN next_attempt_at;
ALTER TABLE sms_batches DROP COLUMN not_before;
UPDATE sms_batches SET status = 'FAILED' WHERE status = 'REFUSED';
ALTER TABLE sms_batches DROP CONSTRAINT sms_batches_status_check;
ALTER TABLE sms_batches ADD CONSTRAINT sms_batches_status_check CHECK (status IN (
    'PENDING', 'ACCEPTED', 'PARTIAL', 'BUFFERED', 'FAILED'));
ALTER TABLE sms_batches DROP COLUMN in_flight;
DROP TABLE IF EXISTS sms_campaign_leases;
