-- §6.1 SMS delivery rate over [start, end): one row for the window (per_run false) and one per
-- campaign (per_run true). Messages are delivery_status rows (one per message sent to a carrier,
-- counted by submission time, as in the §6.2 query); the rate is delivered / final, where final
-- = Delivered, Failed, Undeliverable or Unconfirmed. Messages still in flight (Queued, NoStatus,
-- Sent) are counted apart and do not lower the rate.
SELECT
    GROUPING(campaign_id) = 0 AS per_run,
    coalesce(campaign_id, '') AS campaign_id,
    count(*) AS messages,
    count(*) FILTER (WHERE status IN ('Delivered', 'Failed', 'Undeliverable', 'Unconfirmed')) AS final,
    count(*) FILTER (WHERE status = 'Delivered') AS delivered,
    count(*) FILTER (WHERE status NOT IN ('Delivered', 'Failed', 'Undeliverable', 'Unconfirmed')) AS in_flight
FROM delivery_status
WHERE created_at >= %(start)s AND created_at < %(end)s
GROUP BY GROUPING SETS ((), (campaign_id))
ORDER BY per_run, campaign_id;
