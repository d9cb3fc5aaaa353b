-- Move one flushed chunk of checks from the session's staging table into daily_balance_checks:
-- exactly one row per account and date, latest values win; the account's failure row for the
-- date (from an earlier attempt) goes, since it now has a check. The amount is either plaintext
-- (balance) or encrypted (balance_enc + balance_key_id, the other NULL): a rerun replaces both.
WITH upserted AS (
    INSERT INTO daily_balance_checks AS d (
        account_id, check_date, customer_id, balance, currency, threshold, passes_threshold,
        account_status, check_timestamp, correlation_id, banking_reference_id, recorded_at,
        balance_enc, balance_key_id
    )
    SELECT account_id, %(check_date)s, customer_id, balance, currency, threshold, passes_threshold,
           account_status, check_timestamp, correlation_id, banking_reference_id, now(),
           balance_enc, balance_key_id
    FROM staging_balance_checks
    ON CONFLICT (account_id, check_date) DO UPDATE SET
        customer_id = EXCLUDED.customer_id,
        balance = EXCLUDED.balance,
        balance_enc = EXCLUDED.balance_enc,
        balance_key_id = EXCLUDED.balance_key_id,
        currency = EXCLUDED.currency,
        threshold = EXCLUDED.threshold,
        passes_threshold = EXCLUDED.passes_threshold,
        account_status = EXCLUDED.account_status,
        check_timestamp = EXCLUDED.check_timestamp,
        correlation_id = EXCLUDED.correlation_id,
        banking_reference_id = EXCLUDED.banking_reference_id,
        recorded_at = EXCLUDED.recorded_at
    RETURNING account_id
)
DELETE FROM balance_check_failures f
USING upserted u
WHERE f.account_id = u.account_id AND f.check_date = %(check_date)s;
