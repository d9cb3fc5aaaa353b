-- §6.1 Webhook delivery failures over [start, end): the carrier's delivery callbacks as received
-- (webhook_received events) in the order they arrived (event timestamp, then id). A failure is a
-- callback answered with anything but 2xx (401 bad signature, 400/422 invalid, 413, 503 ...).
--   max_consecutive      the longest run of consecutive failures in the window
--   current_consecutive  the run of failures the window ends with (0 when the last one succeeded)
WITH ordered AS (
    SELECT coalesce(event_data ->> 'status' ~ '^2[0-9][0-9]$', false) AS ok,
           row_number() OVER (ORDER BY (event_data ->> 'timestamp')::timestamptz, id) AS n
    FROM system_events
    WHERE event_type = 'webhook_received'
      AND created_at >= %(start)s AND created_at < %(end)s
),
failures AS (
    SELECT n, n - row_number() OVER (ORDER BY n) AS island FROM ordered WHERE NOT ok
),
islands AS (
    SELECT island, count(*) AS length, max(n) AS last_n FROM failures GROUP BY island
)
SELECT
    (SELECT count(*) FROM ordered) AS received,
    (SELECT count(*) FROM failures) AS failed,
    coalesce((SELECT max(length) FROM islands), 0) AS max_consecutive,
    coalesce((SELECT length FROM islands WHERE last_n = (SELECT max(n) FROM ordered)), 0) AS current_consecutive;
