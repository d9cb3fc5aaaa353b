-- 0007 the submission engine: one writer per campaign (lease with a fencing token), batches
-- marked in flight before any byte is sent, retries not before their backoff, tracking by check
-- date, webhook deliveries per carrier, DELIVERED outranking FAILED.

-- One lease per campaign. Whoever holds an unexpired lease is the campaign's only submitter;
-- every state-changing transaction of the engine first locks its own lease row FOR SHARE with
-- the token it was given (a takeover increments the token), so a holder whose lease was taken
-- over records nothing.
CREATE TABLE sms_campaign_leases (
    campaign_id     text PRIMARY KEY,
    holder          text NOT NULL,
    token           bigint NOT NULL,
    acquired_at     timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);

-- in_flight: set in the transaction that binds the batch to a carrier, before the POST; cleared
-- by the POST's answer. A batch found in flight with no live holder (a crash, a kill) becomes
-- ambiguous. ambiguous: the carrier may have the batch; it stays with that carrier for good.
-- REFUSED: the carrier definitely refused the batch (4xx with its error body); its messages were
-- failed (the offending ones) or moved to new batches.
ALTER TABLE sms_batches ADD COLUMN in_flight boolean NOT NULL DEFAULT false;
ALTER TABLE sms_batches DROP CONSTRAINT sms_batches_status_check;
ALTER TABLE sms_batches ADD CONSTRAINT sms_batches_status_check CHECK (status IN (
    'PENDING', 'ACCEPTED', 'PARTIAL', 'BUFFERED', 'FAILED', 'REFUSED'));
ALTER TABLE sms_batches ADD COLUMN not_before timestamptz;  -- a 429's Retry-After

-- A retry (§3.6 20429, 5xxxx, 503, 21614) is not sent before this moment (exponential backoff
-- across polls).
ALTER TABLE sms_notifications ADD COLUMN next_attempt_at timestamptz;

-- A tracking run follows every notification of its check dates, in whatever batch its messages
-- end up (a split of a partial 202, a retry, a batch sent later by another run).
ALTER TABLE delivery_tracking_runs ADD COLUMN check_dates date[];
UPDATE delivery_tracking_runs t SET check_dates = (
    SELECT coalesce(array_agg(DISTINCT b.check_date), '{}') FROM sms_batches b WHERE b.batch_id = ANY(t.batch_ids));
ALTER TABLE delivery_tracking_runs ALTER COLUMN check_dates SET NOT NULL;

-- DELIVERED outranks every other final status: a late DELIVERED after a retryable FAILED wins.
UPDATE delivery_status SET status_rank = 35 WHERE status = 'Delivered';

-- Webhook deliveries are per carrier: one carrier's webhook-id says nothing about another's.
ALTER TABLE webhook_events ADD COLUMN carrier text NOT NULL DEFAULT 'primary';
ALTER TABLE webhook_events ALTER COLUMN carrier DROP DEFAULT;
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_pkey;
ALTER TABLE webhook_events ADD PRIMARY KEY (carrier, webhook_id);
