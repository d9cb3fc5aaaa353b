-- Console, Campaign: the funnel of campaign %(campaign_id)s per carrier, per message (a retry is a
-- message of its own), and a total row (carrier NULL):
--   posted          messages put in a batch posted to that carrier (sms_messages.carrier)
--   accepted        messages the carrier accepted (a delivery_status row)
--   delivered / failed / undeliverable / unconfirmed   delivery_status' final status
--   in_progress     Queued, Sent or NoStatus
SELECT m.carrier,
       count(*) AS posted,
       count(d.message_id) AS accepted,
       count(*) FILTER (WHERE d.status = 'Delivered') AS delivered,
       count(*) FILTER (WHERE d.status = 'Failed') AS failed,
       count(*) FILTER (WHERE d.status = 'Undeliverable') AS undeliverable,
       count(*) FILTER (WHERE d.status = 'Unconfirmed') AS unconfirmed,
       count(*) FILTER (WHERE d.status IN ('Queued', 'Sent', 'NoStatus')) AS in_progress
FROM sms_notifications n
JOIN sms_messages m ON m.notification_id = n.notification_id
LEFT JOIN delivery_status d ON d.message_id = m.message_id
WHERE n.campaign_id = %(campaign_id)s AND m.carrier IS NOT NULL
GROUP BY GROUPING SETS ((m.carrier), ())
ORDER BY m.carrier NULLS LAST;
