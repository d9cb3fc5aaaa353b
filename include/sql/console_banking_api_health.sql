-- Console, Bank API: the §6.2 "Banking API health" query as written, over [%(start)s, %(end)s)
-- instead of the last 24 hours, ordered by date. success_rate counts 2xx/3xx only (a 404 for an
-- unknown account lowers it; the §6.1 availability below does not).
SELECT
    DATE(event_data->>'timestamp') AS date,
    COUNT(*) AS total_calls,
    COUNT(*) FILTER (WHERE event_data->>'status' ~ '^(2|3)')
        AS successful_calls,
    ROUND(100.0 * COUNT(*) FILTER (WHERE event_data->>'status' ~ '^(2|3)')
        / COUNT(*), 2) AS success_rate
FROM system_events
WHERE event_type = 'banking_api_call'
  AND created_at >= %(start)s AND created_at < %(end)s
GROUP BY DATE(event_data->>'timestamp')
ORDER BY date;
