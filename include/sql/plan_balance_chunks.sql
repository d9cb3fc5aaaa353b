-- Cut the active customer base into chunks of %(chunk_size)s accounts by surrogate id.
-- One row per chunk: its id range and size. Only ids and counts leave the database.
WITH active AS (
    SELECT id, (row_number() OVER (ORDER BY id) - 1) / %(chunk_size)s AS chunk_no
    FROM customers
    WHERE status = 'ACTIVE'
)
SELECT chunk_no, min(id) AS id_lo, max(id) AS id_hi, count(*) AS accounts
FROM active
GROUP BY chunk_no
ORDER BY chunk_no;
