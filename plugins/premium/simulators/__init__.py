"""Loopback HTTP simulators of the external systems (core banking, later the SMS carrier).

Test tools for the demo, the tests and the benchmark: real servers on 127.0.0.1 with a
documented deterministic data model and fault injection. They import neither Airflow nor
anything outside the standard library, aiohttp, orjson and ``premium.identifiers``.
"""
