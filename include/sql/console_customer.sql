-- Console, Customer lookup: the customer's record without its PII. The first name and the phone
-- number are stored only encrypted and are never read here; the account id is masked as in the logs
-- (ACC-1****890, premium.audit.mask_account).
SELECT customer_id,
       CASE WHEN length(account_id) > 8 THEN left(account_id, 5) || '****' || right(account_id, 3)
            ELSE '****' END AS account_masked,
       language, status, sms_consent, sms_consent_at, phone_valid, created_at, updated_at
FROM customers
WHERE customer_id = %(customer_id)s;
