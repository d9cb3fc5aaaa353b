-- Console, Today: the bank's health over [%(start)s, %(end)s) (30 days), by the §6.1 definitions of
-- premium_monitoring (the window row of include/sql/metrics_banking_api.sql; a test holds them equal).
--   calls              banking_api_call events except 'breaker_open' (no call was made)
--   answered           HTTP 1xx-4xx other than 429
--   availability_pct   100 * answered / calls, 2 decimals (NULL without calls)
--   timed              calls with an HTTP status or a 'timeout'
--   p95_s              percentile_cont(0.95) of duration_ms / 1000 over the timed calls, 3 decimals
SELECT
    count(*) AS calls,
    count(*) FILTER (WHERE event_data ->> 'status' ~ '^[1-4][0-9][0-9]$' AND event_data ->> 'status' <> '429')
        AS answered,
    round(100.0 * count(*) FILTER (WHERE event_data ->> 'status' ~ '^[1-4][0-9][0-9]$'
                                     AND event_data ->> 'status' <> '429') / nullif(count(*), 0), 2)
        AS availability_pct,
    count(*) FILTER (WHERE event_data ->> 'status' ~ '^[0-9]{3}$' OR event_data ->> 'status' = 'timeout') AS timed,
    round((percentile_cont(0.95) WITHIN GROUP (ORDER BY (event_data ->> 'duration_ms')::double precision)
        FILTER (WHERE event_data ->> 'status' ~ '^[0-9]{3}$' OR event_data ->> 'status' = 'timeout')
        / 1000)::numeric, 3) AS p95_s
FROM system_events
WHERE event_type = 'banking_api_call'
  AND created_at >= %(start)s AND created_at < %(end)s
  AND coalesce(event_data ->> 'status', 'breaker_open') <> 'breaker_open';
