-- 0002 qualification and SMS submission: per-customer outcomes, the notification outbox,
-- message attempts, carrier batches and the per-date campaign run record.

-- Whether the stored phone number is a valid Israeli mobile (set by the loader; NULL = not yet
-- validated). Not PII: lets qualification run in SQL without decrypting numbers.
ALTER TABLE customers ADD COLUMN phone_valid boolean;

-- One row per customer and check date: qualified, or the first reason why not.
CREATE TABLE qualification_outcomes (
    check_date        date NOT NULL,
    customer_id       text NOT NULL,
    campaign_id       text NOT NULL,
    outcome           text NOT NULL CHECK (outcome IN (
                          'qualified', 'not_active', 'no_consent', 'no_check_today', 'account_not_active',
                          'below_threshold', 'too_few_checks', 'already_notified', 'invalid_phone')),
    passing_checks    integer NOT NULL,
    failing_checks    integer NOT NULL,
    window_start      date NOT NULL,
    template_id       text,
    encoding          text,
    segments          integer,
    dag_run_id        text NOT NULL,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (check_date, customer_id)
);
CREATE INDEX qualification_outcomes_customer ON qualification_outcomes (customer_id, check_date);
CREATE INDEX qualification_outcomes_campaign_outcome ON qualification_outcomes (campaign_id, outcome);

-- The outbox: one notification per customer and campaign, written before anything is sent.
CREATE TABLE sms_notifications (
    notification_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id       text NOT NULL,
    customer_id       text NOT NULL,
    check_date        date NOT NULL,
    status            text NOT NULL CHECK (status IN (
                          'PENDING', 'SUBMITTED', 'QUEUED', 'SENT', 'DELIVERED', 'FAILED', 'UNDELIVERABLE',
                          'UNCONFIRMED')),
    attempts          integer NOT NULL DEFAULT 0,
    current_message_id text,
    language          text NOT NULL,
    template_id       text NOT NULL,
    encoding          text NOT NULL,
    segments          integer NOT NULL,
    error_code        text,
    error_detail      text,
    correlation_id    text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, customer_id)
);
CREATE INDEX sms_notifications_status ON sms_notifications (campaign_id, status);

-- Carrier batches (§3.2). batch_id is deterministic (BATCH-<check date>-<nnn>); a batch is bound
-- to one carrier the first time it is posted and never moves after an ambiguous failure.
CREATE TABLE sms_batches (
    batch_id          text PRIMARY KEY,
    campaign_id       text NOT NULL,
    check_date        date NOT NULL,
    seq               integer NOT NULL,
    carrier           text CHECK (carrier IN ('primary', 'secondary')),
    status            text NOT NULL CHECK (status IN (
                          'PENDING', 'ACCEPTED', 'PARTIAL', 'BUFFERED', 'FAILED')),
    post_attempts     integer NOT NULL DEFAULT 0,
    messages          integer NOT NULL,
    ambiguous         boolean NOT NULL DEFAULT false,
    last_error        text,
    correlation_id    text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (check_date, seq)
);
CREATE INDEX sms_batches_open ON sms_batches (campaign_id, status) WHERE status IN ('PENDING', 'BUFFERED');

-- One row per message sent to a carrier: an attempt of a notification (messageId is
-- deterministic: MSG-<campaign>-<customer>-<attempt>).
CREATE TABLE sms_messages (
    message_id        text PRIMARY KEY,
    notification_id   bigint NOT NULL REFERENCES sms_notifications (notification_id),
    campaign_id       text NOT NULL,
    customer_id       text NOT NULL,
    attempt           integer NOT NULL,
    batch_id          text NOT NULL REFERENCES sms_batches (batch_id),
    carrier           text,
    tracking_id       text,
    status            text NOT NULL CHECK (status IN (
                          'PENDING', 'QUEUED', 'SENT', 'DELIVERED', 'FAILED', 'UNDELIVERABLE', 'REJECTED',
                          'NO_STATUS', 'UNCONFIRMED')),
    status_code       text,
    encoding          text NOT NULL,
    segments          integer NOT NULL,
    correlation_id    text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, attempt)
);
CREATE INDEX sms_messages_batch ON sms_messages (batch_id);
CREATE UNIQUE INDEX sms_messages_tracking ON sms_messages (carrier, tracking_id) WHERE tracking_id IS NOT NULL;

-- One record per check date: what qualification found and what submission did.
CREATE TABLE sms_campaign_runs (
    check_date        date PRIMARY KEY,
    campaign_id       text NOT NULL,
    dag_run_id        text NOT NULL,
    correlation_id    text NOT NULL,
    mode              text NOT NULL CHECK (mode IN ('SEND', 'DRY_RUN', 'LATE_NO_SEND')),
    qualified         integer NOT NULL DEFAULT 0,
    reasons           jsonb NOT NULL DEFAULT '{}'::jsonb,
    send_after        timestamptz,
    batches           integer,
    submitted         integer,
    rejected          integer,
    failed_over       integer,
    buffered          integer,
    status            text NOT NULL CHECK (status IN ('QUALIFIED', 'WAITING', 'SUBMITTING', 'DONE', 'NOT_SENT', 'FAILED')),
    detail            text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
