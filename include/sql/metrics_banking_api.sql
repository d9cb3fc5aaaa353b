-- §6.1 Banking API availability and response time over [start, end): one row for the window
-- (per_run false) and one per run (per_run true; the run's correlation_id).
--   calls        every banking_api_call event (one per HTTP attempt) except 'breaker_open' (no call made)
--   answered     calls answered by a working service: an HTTP status 1xx-4xx other than 429
--                (a 404 for an unknown account is an answer; 5xx, 429, timeout, connection_error,
--                no_answer are not)
--   timed        calls with a response time: an HTTP status, or 'timeout' (its duration is the timeout)
--   p95_ms       95th percentile (continuous) of duration_ms over the timed calls
SELECT
    GROUPING(event_data ->> 'correlation_id') = 0 AS per_run,
    coalesce(event_data ->> 'correlation_id', 'unknown') AS correlation_id,
    count(*) AS calls,
    count(*) FILTER (WHERE event_data ->> 'status' ~ '^[1-4][0-9][0-9]$' AND event_data ->> 'status' <> '429')
        AS answered,
    count(*) FILTER (WHERE event_data ->> 'status' ~ '^[0-9]{3}$' OR event_data ->> 'status' = 'timeout') AS timed,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY (event_data ->> 'duration_ms')::double precision)
        FILTER (WHERE event_data ->> 'status' ~ '^[0-9]{3}$' OR event_data ->> 'status' = 'timeout') AS p95_ms
FROM system_events
WHERE event_type = 'banking_api_call'
  AND created_at >= %(start)s AND created_at < %(end)s
  AND coalesce(event_data ->> 'status', 'breaker_open') <> 'breaker_open'
GROUP BY GROUPING SETS ((), (event_data ->> 'correlation_id'))
ORDER BY per_run, correlation_id;
