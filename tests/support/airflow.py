"""Airflow-side helpers for tests: metadata DB, running a DAG with dag.test()."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from typing import Any

from tests.support import env
from tests.support.db import ensure_database


def migrate_airflow_db() -> None:
    ensure_database(env.AIRFLOW_DB)
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(env.ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def run_dag(dag_id: str, logical_date: datetime, conf: dict[str, Any] | None = None):
    """dag.test() for one logical date; returns the DagRun."""
    dag = load_dag(dag_id)
    return dag.test(logical_date=logical_date, run_conf=conf or {})


def task_states(dag_run) -> dict[str, list[str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == dag_run.run_id).all()
        states: dict[str, list[str]] = {}
        for ti in tis:
            states.setdefault(ti.task_id, []).append(str(ti.state))
    return states
