-- 0001 foundation: customers, daily balance checks, per-account outcomes, per-date run records, alerts.

-- Customers. PII (first name, phone number) is stored only as AES-256-GCM ciphertext with the id
-- of the key that wrote it; phone_hash is a keyed HMAC-SHA256 of the normalised number for look-ups.
-- `id` is a surrogate used only to cut the active base into chunk ranges (never PII, safe in XCom).
CREATE TABLE customers (
    id              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    customer_id     text PRIMARY KEY,
    account_id      text NOT NULL UNIQUE,
    first_name_enc  bytea NOT NULL,
    phone_enc       bytea NOT NULL,
    phone_hash      bytea NOT NULL,
    pii_key_id      text NOT NULL,
    language        text NOT NULL CHECK (language IN ('he', 'en', 'ar', 'ru')),
    status          text NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'SUSPENDED', 'CLOSED')),
    sms_consent     boolean NOT NULL,
    sms_consent_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_active_id ON customers (id) WHERE status = 'ACTIVE';
CREATE INDEX customers_phone_hash ON customers (phone_hash);
CREATE INDEX customers_pii_key_id ON customers (pii_key_id);

-- One row per account and check date (§2.6), latest values win on a rerun.
CREATE TABLE daily_balance_checks (
    account_id            text NOT NULL,
    check_date            date NOT NULL,
    customer_id           text NOT NULL,
    balance               numeric(18, 2) NOT NULL,
    currency              text NOT NULL,
    threshold             numeric(18, 2) NOT NULL,
    passes_threshold      boolean NOT NULL,
    account_status        text NOT NULL,
    check_timestamp       timestamptz NOT NULL,
    correlation_id        text NOT NULL,
    banking_reference_id  text,
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, check_date)
);
CREATE INDEX daily_balance_checks_customer_date
    ON daily_balance_checks (customer_id, check_date) INCLUDE (passes_threshold, account_status);
CREATE INDEX daily_balance_checks_date ON daily_balance_checks (check_date);

-- Accounts of a date that have no check row, with the reason. An account has a check row or a
-- failure row for a date, never both.
CREATE TABLE balance_check_failures (
    account_id      text NOT NULL,
    check_date      date NOT NULL,
    customer_id     text NOT NULL,
    reason          text NOT NULL CHECK (reason IN (
                        'not_found', 'invalid_request', 'invalid_response', 'failed_after_retries',
                        'unexpected_status', 'skipped_outage', 'not_attempted')),
    http_status     integer,
    detail          text,
    attempts        integer NOT NULL DEFAULT 0,
    correlation_id  text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, check_date)
);
CREATE INDEX balance_check_failures_date_reason ON balance_check_failures (check_date, reason);

-- One record per check date: what the latest run of that date planned and achieved.
CREATE TABLE balance_check_runs (
    check_date          date PRIMARY KEY,
    dag_run_id          text NOT NULL,
    correlation_id      text NOT NULL,
    status              text NOT NULL CHECK (status IN (
                            'RUNNING', 'COMPLETE', 'PARTIAL', 'SKIPPED_OUTAGE', 'FAILED')),
    threshold           numeric(18, 2) NOT NULL,
    accounts_planned    integer NOT NULL DEFAULT 0,
    chunks              integer NOT NULL DEFAULT 0,
    mapped_tasks        integer NOT NULL DEFAULT 0,
    accounts_checked    integer,
    accounts_passing    integer,
    accounts_skipped    integer,
    accounts_failed     integer,
    outage_since        timestamptz,
    outage_declared_at  timestamptz,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz,
    detail              text
);

-- Every alert the project raises (the notifier routing comes on top of this record).
CREATE TABLE alerts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    raised_at   timestamptz NOT NULL DEFAULT now(),
    severity    text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    kind        text NOT NULL,
    summary     text NOT NULL,
    dag_id      text,
    run_id      text,
    task_id     text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX alerts_raised_at ON alerts (raised_at);

-- What happened to each account on each date, in one place for operators.
CREATE VIEW account_check_outcomes AS
SELECT check_date, account_id, customer_id,
       CASE WHEN passes_threshold THEN 'checked_passing' ELSE 'checked_below_threshold' END AS outcome,
       NULL::integer AS http_status, correlation_id, recorded_at
FROM daily_balance_checks
UNION ALL
SELECT check_date, account_id, customer_id, reason, http_status, correlation_id, recorded_at
FROM balance_check_failures;
