-- Qualification of check date %(check_date)s: one outcome per customer, "qualified" or the first
-- reason why not, in this order: not_active, no_consent, already_notified (an earlier date of the
-- same campaign has a notification), no_check_today, account_not_active (D's check),
-- below_threshold (any failing check in the window), too_few_checks (fewer passing checks than
-- %(min_passing)s in the window), invalid_phone. Days without a check row for the customer
-- (outage, not found, failed after retries) count neither way.
WITH window_checks AS (
    SELECT customer_id,
           count(*) FILTER (WHERE passes_threshold) AS passing,
           count(*) FILTER (WHERE NOT passes_threshold) AS failing
    FROM daily_balance_checks
    WHERE check_date BETWEEN %(window_start)s AND %(check_date)s
    GROUP BY customer_id
),
today AS (
    SELECT customer_id, account_status
    FROM daily_balance_checks
    WHERE check_date = %(check_date)s
),
notified AS (
    SELECT DISTINCT customer_id
    FROM sms_notifications
    WHERE campaign_id = %(campaign_id)s AND check_date < %(check_date)s
)
INSERT INTO qualification_outcomes AS q (
    check_date, customer_id, campaign_id, outcome, passing_checks, failing_checks, window_start,
    template_id, encoding, segments, dag_run_id, computed_at
)
SELECT %(check_date)s, c.customer_id, %(campaign_id)s,
       CASE
           WHEN c.status <> 'ACTIVE' THEN 'not_active'
           WHEN NOT c.sms_consent THEN 'no_consent'
           WHEN n.customer_id IS NOT NULL THEN 'already_notified'
           WHEN t.customer_id IS NULL THEN 'no_check_today'
           WHEN t.account_status <> 'ACTIVE' THEN 'account_not_active'
           WHEN coalesce(w.failing, 0) > 0 THEN 'below_threshold'
           WHEN coalesce(w.passing, 0) < %(min_passing)s THEN 'too_few_checks'
           WHEN c.phone_valid IS NOT TRUE THEN 'invalid_phone'
           ELSE 'qualified'
       END,
       coalesce(w.passing, 0), coalesce(w.failing, 0), %(window_start)s,
       NULL, NULL, NULL, %(dag_run_id)s, now()
FROM customers c
LEFT JOIN window_checks w ON w.customer_id = c.customer_id
LEFT JOIN today t ON t.customer_id = c.customer_id
LEFT JOIN notified n ON n.customer_id = c.customer_id
ON CONFLICT (check_date, customer_id) DO UPDATE SET
    campaign_id = EXCLUDED.campaign_id,
    outcome = EXCLUDED.outcome,
    passing_checks = EXCLUDED.passing_checks,
    failing_checks = EXCLUDED.failing_checks,
    window_start = EXCLUDED.window_start,
    template_id = NULL,
    encoding = NULL,
    segments = NULL,
    dag_run_id = EXCLUDED.dag_run_id,
    computed_at = EXCLUDED.computed_at;
