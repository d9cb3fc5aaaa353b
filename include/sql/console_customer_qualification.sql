-- Console, Customer lookup: the customer's qualification outcome each day of [%(start)s, %(end)s)
-- (qualification_outcomes: 'qualified' or the first reason why not).
SELECT check_date, outcome, passing_checks, failing_checks, window_start, campaign_id, dag_run_id
FROM qualification_outcomes
WHERE customer_id = %(customer_id)s AND check_date >= %(start)s AND check_date < %(end)s
ORDER BY check_date;
