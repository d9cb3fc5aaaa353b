-- Console, run link: the check date whose (latest) balance run is the DAG run %(dag_run_id)s.
SELECT check_date FROM balance_check_runs WHERE dag_run_id = %(dag_run_id)s;
