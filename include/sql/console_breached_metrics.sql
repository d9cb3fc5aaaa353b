-- Console, Today: the §6.1 figures breaching their threshold in the latest premium_monitoring
-- window computed before %(end)s (and at most 7 days before it), window scope only.
SELECT metric, labels, value, samples, threshold, computed_at
FROM (
    SELECT DISTINCT ON (metric, labels) metric, labels, value, samples, threshold, breached, computed_at
    FROM integration_metrics
    WHERE scope = 'window' AND computed_at < %(end)s AND computed_at >= %(end)s - interval '7 days'
    ORDER BY metric, labels, computed_at DESC
) latest
WHERE breached
ORDER BY metric, labels::text;
