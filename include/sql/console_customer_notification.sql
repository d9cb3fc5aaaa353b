-- Console, Customer lookup: the customer's notification of campaign %(campaign_id)s (the outbox
-- row; its encrypted text and number are not read).
SELECT notification_id, campaign_id, check_date, status, attempts, current_message_id, language,
       template_id, encoding, segments, error_code, error_detail, next_attempt_at, correlation_id,
       created_at, updated_at
FROM sms_notifications
WHERE customer_id = %(customer_id)s AND campaign_id = %(campaign_id)s;
