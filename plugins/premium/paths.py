"""Where the project's non-Python files live (include/sql, include/templates)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

# plugins/premium/paths.py -> project root. In the container image the same layout is mounted
# under /opt/airflow; PREMIUM_INCLUDE_DIR overrides it for other layouts.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def include_dir() -> Path:
    return Path(os.environ.get("PREMIUM_INCLUDE_DIR", PROJECT_ROOT / "include"))


def sql_dir() -> Path:
    return include_dir() / "sql"


@cache
def read_sql(name: str) -> str:
    """Text of include/sql/<name>; raises FileNotFoundError naming the path."""
    return (sql_dir() / name).read_text(encoding="utf-8")
