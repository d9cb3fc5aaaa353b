-- Banking API health last 24 hours
SELECT 
    DATE(event_data->>'timestamp') AS date,
    COUNT(*) AS total_calls,
    COUNT(*) FILTER (WHERE event_data->>'status' ~ '^(2|3)') 
        AS successful_calls,
    ROUND(100.0 * COUNT(*) FILTER (WHERE event_data->>'status' ~ '^(2|3)') 
        / COUNT(*), 2) AS success_rate
FROM system_events
WHERE event_type = 'banking_api_call'
  AND created_at >= CURRENT_TIMESTAMP - INTERVAL '24 hours'
GROUP BY DATE(event_data->>'timestamp');
