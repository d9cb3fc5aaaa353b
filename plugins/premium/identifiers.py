"""Identifier formats shared by the synthetic customer base and the core-banking simulator.

Account ids follow the §2.2 example format ``ACC-NNNNN-NNNNN``. The synthetic base numbers
customers 1..N; customer number n has customer_id ``str(n)`` and account
``ACC-<n // 100000 :05>-<n % 100000 :05>``, so 1,000,000 customers fit the format and the
simulator can answer with the right ``customerId`` for an account.
"""

from __future__ import annotations

import re

ACCOUNT_ID_RE = re.compile(r"^ACC-\d{5}-\d{5}$")
CUSTOMER_ID_RE = re.compile(r"^[0-9]{1,12}$")


def account_id_for(customer_number: int) -> str:
    if not 0 < customer_number < 10**10:
        raise ValueError("customer number out of range")
    return f"ACC-{customer_number // 100000:05d}-{customer_number % 100000:05d}"


def customer_number_for(account_id: str) -> int:
    if not ACCOUNT_ID_RE.match(account_id):
        raise ValueError("account id is not in ACC-NNNNN-NNNNN format")
    return int(account_id[4:9]) * 100000 + int(account_id[10:15])


def is_valid_account_id(account_id: str) -> bool:
    return bool(ACCOUNT_ID_RE.match(account_id))
