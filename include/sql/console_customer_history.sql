-- Console, Customer lookup: every delivery status change of the customer's messages in campaign
-- %(campaign_id)s (delivery_status_history: submission, poll, webhook or expiry), in order.
SELECT h.id, h.message_id, m.attempt, h.from_status, h.to_status, h.status_code, h.source, h.event_at, h.recorded_at
FROM sms_notifications n
JOIN sms_messages m ON m.notification_id = n.notification_id
JOIN delivery_status_history h ON h.message_id = m.message_id
WHERE n.customer_id = %(customer_id)s AND n.campaign_id = %(campaign_id)s
ORDER BY h.id;
