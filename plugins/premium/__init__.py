"""Premium Customer Notification System: the logic behind the DAGs in dags/.

Importable from every Airflow component because plugins/ is on sys.path there; tests and the
command line put plugins/ on sys.path too (pyproject's pytest `pythonpath`, the Makefile's
PYTHONPATH). Modules here do no work at import time.
"""
