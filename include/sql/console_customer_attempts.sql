-- Console, Customer lookup: each message sent for the customer in campaign %(campaign_id)s (one per
-- attempt), with its batch, carrier, ids and delivery status.
SELECT m.attempt, m.message_id, m.batch_id, m.carrier, m.tracking_id, m.status AS message_status,
       m.status_code, m.submitted_at, d.status AS delivery_status, d.status_code AS delivery_code,
       d.delivered_at, d.last_source, d.polls, d.retry_decision
FROM sms_notifications n
JOIN sms_messages m ON m.notification_id = n.notification_id
LEFT JOIN delivery_status d ON d.message_id = m.message_id
WHERE n.customer_id = %(customer_id)s AND n.campaign_id = %(campaign_id)s
ORDER BY m.attempt;
