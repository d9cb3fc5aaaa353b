-- 0003 delivery tracking: current status per message, its history, webhook deliveries, tracking runs.

-- One row per message sent to a carrier (§3.3). `status` uses the vocabulary of the §6.2
-- "SMS delivery rate by hour" query: Queued, Sent, Delivered, Failed, Undeliverable, NoStatus,
-- Unconfirmed (72 h passed without a final status). `created_at` is when the carrier accepted
-- the message, so the §6.2 query counts messages by submission hour.
CREATE TABLE delivery_status (
    message_id        text PRIMARY KEY REFERENCES sms_messages (message_id),
    notification_id   bigint NOT NULL,
    campaign_id       text NOT NULL,
    customer_id       text NOT NULL,
    carrier           text NOT NULL,
    tracking_id       text NOT NULL,
    status            text NOT NULL CHECK (status IN (
                          'Queued', 'Sent', 'NoStatus', 'Delivered', 'Failed', 'Undeliverable', 'Unconfirmed')),
    status_rank       smallint NOT NULL,
    status_code       text,
    status_message    text,
    delivered_at      timestamptz,
    last_event_at     timestamptz,
    last_source       text,
    polls             integer NOT NULL DEFAULT 0,
    retry_decision    text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (carrier, tracking_id)
);
CREATE INDEX delivery_status_open ON delivery_status (campaign_id) WHERE status_rank < 3;
CREATE INDEX delivery_status_created ON delivery_status (created_at);

-- Every change that was applied (poll, webhook or expiry), in order.
CREATE TABLE delivery_status_history (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      text NOT NULL,
    from_status     text,
    to_status       text NOT NULL,
    status_code     text,
    source          text NOT NULL CHECK (source IN ('submission', 'poll', 'webhook', 'expiry')),
    event_at        timestamptz,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_status_history_message ON delivery_status_history (message_id, id);

-- Webhook deliveries by webhook-id: a replay is recognised and has no second effect.
CREATE TABLE webhook_events (
    webhook_id      text PRIMARY KEY,
    tracking_id     text,
    status          text,
    outcome         text NOT NULL CHECK (outcome IN ('applied', 'no_change', 'unknown_tracking_id')),
    received_at     timestamptz NOT NULL DEFAULT now()
);

-- One record per premium_delivery_tracking run: which submissions it follows, and until when.
CREATE TABLE delivery_tracking_runs (
    dag_run_id      text PRIMARY KEY,
    campaign_id     text NOT NULL,
    batch_ids       text[] NOT NULL,
    submitted_at    timestamptz NOT NULL,
    deadline        timestamptz NOT NULL,
    poll_interval_s double precision NOT NULL,
    polls           integer NOT NULL DEFAULT 0,
    status          text NOT NULL CHECK (status IN ('TRACKING', 'DONE')),
    counts          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

-- A notification can now mirror a message's NO_STATUS.
ALTER TABLE sms_notifications DROP CONSTRAINT sms_notifications_status_check;
ALTER TABLE sms_notifications ADD CONSTRAINT sms_notifications_status_check CHECK (status IN (
    'PENDING', 'SUBMITTED', 'QUEUED', 'SENT', 'NO_STATUS', 'DELIVERED', 'FAILED', 'UNDELIVERABLE', 'UNCONFIRMED'));
