-- One page of active accounts in (%(after_id)s, %(id_hi)s], keyset by id.
SELECT id, customer_id, account_id
FROM customers
WHERE status = 'ACTIVE' AND id > %(after_id)s AND id <= %(id_hi)s
ORDER BY id
LIMIT %(page_size)s;
