-- The outbox carries its payload: each notification's rendered text and E.164 number, encrypted
-- (AES-256-GCM under the PII keyring, bound to campaign, customer and field), written when the
-- outbox is prepared the evening before the send window. The morning submission only decrypts.
--
-- No campaign may be in flight when this runs: a notification written before it has no payload,
-- so it could be neither sent nor retried (delivery tracking retries until its final state).
DO $$
DECLARE
    in_flight bigint := (SELECT count(*) FROM sms_notifications
                         WHERE status NOT IN ('DELIVERED', 'FAILED', 'UNDELIVERABLE', 'UNCONFIRMED'));
BEGIN
    IF in_flight > 0 THEN
        RAISE EXCEPTION '0006_outbox_payload: % notifications are not final (a campaign is being sent or '
                        'tracked); let submission and delivery tracking finish (at most 72 h), then migrate',
                        in_flight;
    END IF;
END $$;

ALTER TABLE sms_notifications
    ADD COLUMN content_enc bytea,
    ADD COLUMN phone_enc   bytea,
    ADD COLUMN pii_key_id  text,
    ADD CONSTRAINT sms_notifications_payload CHECK (
        status <> 'PENDING' OR (content_enc IS NOT NULL AND phone_enc IS NOT NULL AND pii_key_id IS NOT NULL));

-- Submission updates every notification and message row once or twice: without an index on the
-- columns it changes, and with room on the page, those are HOT updates (no index writes).
-- Lookups by campaign use the (campaign_id, customer_id) key; by tracking id, delivery_status.
DROP INDEX IF EXISTS sms_notifications_status;
DROP INDEX IF EXISTS sms_messages_tracking;
ALTER TABLE sms_notifications SET (fillfactor = 80);
ALTER TABLE sms_messages SET (fillfactor = 80);
