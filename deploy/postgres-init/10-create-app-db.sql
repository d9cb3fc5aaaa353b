-- Run once by the postgres image's entrypoint, only when the data volume is empty
-- (docker-entrypoint-initdb.d), as POSTGRES_USER connected to POSTGRES_DB (premium_airflow,
-- Airflow's metadata DB). Creates the application DB next to it, owned by the same role.
-- Its schema is created by `python -m premium.cli migrate` in the airflow-init service.
-- Production: use a managed PostgreSQL, separate roles for Airflow and for the application,
-- and TLS (sslmode in the premium_db connection's extra).
CREATE DATABASE premium_app;
