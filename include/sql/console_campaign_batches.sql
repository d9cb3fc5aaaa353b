-- Console, Campaign: each batch of campaign %(campaign_id)s (the first %(limit)s by check date and
-- sequence). last_error is the carrier's or the engine's text (ids and codes; scrubbed on display).
SELECT batch_id, check_date, seq, carrier, status, messages, post_attempts, ambiguous, in_flight,
       submitted_at, last_error
FROM sms_batches
WHERE campaign_id = %(campaign_id)s
ORDER BY check_date, seq
LIMIT %(limit)s;
