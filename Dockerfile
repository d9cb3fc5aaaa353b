# Image of the Premium Customer Notification System: the official Airflow 3.3.2 image plus the
# project's pinned dependencies. The code (dags/, plugins/, include/) is NOT baked in: the
# docker-compose.yaml mounts it, so the same image serves every service, including the simulators.
#
#   docker compose build            # or implicitly on `docker compose up`
#
# For a production image, bake the code in instead of mounting it (COPY dags/ plugins/ include/)
# and tag it with the git revision.
FROM apache/airflow:3.3.2-python3.11

# The base image runs as the unprivileged `airflow` user; pip must run as that user too.
USER airflow

COPY requirements.txt /requirements.txt

# Constraint-free install: requirements.txt pins every direct dependency exactly, including
# apache-airflow==3.3.2 itself (so pip cannot up- or downgrade Airflow), and is the single source
# of truth shared with the local venv (`make venv`). Airflow's constraints file is therefore not
# used (`--constraint` would clash with our own pins, e.g. SQLAlchemy 2.1 or pandas 3.1). pip may
# warn about packages preinstalled in the base image that we do not use (e.g. other providers);
# the test suite, not the constraints file, is what vouches for this set.
# Note: requirements.txt also carries the test tooling (pytest, ruff), a few MB we accept so that
# `docker compose run airflow-scheduler python -m pytest` works inside the image.
RUN pip install --no-cache-dir -r /requirements.txt
