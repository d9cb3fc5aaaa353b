-- §6.1 SMS carrier availability over [start, end): one row per carrier (per_run false) and one
-- per run (per_run true; the run's correlation_id, all carriers). Calls are the sms_api_call
-- (batch POST) and sms_status_poll (status GET) events, one per HTTP attempt, except
-- 'breaker_open'; answered = an HTTP status 1xx-4xx other than 429 (a 400 rejecting an invalid
-- number is an answer; 5xx, 429, timeout, connection_error, no_answer are not).
SELECT
    GROUPING(event_data ->> 'correlation_id') = 0 AS per_run,
    coalesce(event_data ->> 'carrier', 'unknown') AS carrier,
    coalesce(event_data ->> 'correlation_id', 'unknown') AS correlation_id,
    count(*) AS calls,
    count(*) FILTER (WHERE event_data ->> 'status' ~ '^[1-4][0-9][0-9]$' AND event_data ->> 'status' <> '429')
        AS answered
FROM system_events
WHERE event_type IN ('sms_api_call', 'sms_status_poll')
  AND created_at >= %(start)s AND created_at < %(end)s
  AND coalesce(event_data ->> 'status', 'breaker_open') <> 'breaker_open'
GROUP BY GROUPING SETS ((event_data ->> 'carrier'), (event_data ->> 'correlation_id'))
ORDER BY per_run, carrier, correlation_id;
