-- Console, Bank API: the §6.1 figures of premium_monitoring (include/sql/metrics_banking_api.sql),
-- per day (the §6.2 day: DATE of the event's timestamp), over [%(start)s, %(end)s).
--   calls              banking_api_call events except 'breaker_open' (no call was made)
--   answered           HTTP 1xx-4xx other than 429
--   availability_pct   100 * answered / calls, 2 decimals
--   timed              calls with an HTTP status or a 'timeout' (they have a response time)
--   p50_s, p95_s       percentile_cont(0.50 / 0.95) of duration_ms / 1000 over the timed calls, 3 decimals
SELECT
    DATE(event_data ->> 'timestamp') AS date,
    count(*) AS calls,
    count(*) FILTER (WHERE event_data ->> 'status' ~ '^[1-4][0-9][0-9]$' AND event_data ->> 'status' <> '429')
        AS answered,
    round(100.0 * count(*) FILTER (WHERE event_data ->> 'status' ~ '^[1-4][0-9][0-9]$'
                                     AND event_data ->> 'status' <> '429') / count(*), 2) AS availability_pct,
    count(*) FILTER (WHERE event_data ->> 'status' ~ '^[0-9]{3}$' OR event_data ->> 'status' = 'timeout') AS timed,
    round((percentile_cont(0.50) WITHIN GROUP (ORDER BY (event_data ->> 'duration_ms')::double precision)
        FILTER (WHERE event_data ->> 'status' ~ '^[0-9]{3}$' OR event_data ->> 'status' = 'timeout')
        / 1000)::numeric, 3) AS p50_s,
    round((percentile_cont(0.95) WITHIN GROUP (ORDER BY (event_data ->> 'duration_ms')::double precision)
        FILTER (WHERE event_data ->> 'status' ~ '^[0-9]{3}$' OR event_data ->> 'status' = 'timeout')
        / 1000)::numeric, 3) AS p95_s
FROM system_events
WHERE event_type = 'banking_api_call'
  AND created_at >= %(start)s AND created_at < %(end)s
  AND coalesce(event_data ->> 'status', 'breaker_open') <> 'breaker_open'
GROUP BY DATE(event_data ->> 'timestamp')
ORDER BY date;
