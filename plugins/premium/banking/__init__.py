"""Core-banking integration (§2): the balance client and the daily fetch stage."""
