"""What a task learns from its run: the as-of date, ids, its settings. No now() here."""

from __future__ import annotations

from datetime import date
from typing import Any

from premium import settings

LOCAL_TZ = "Asia/Jerusalem"


def as_of_date(context: Any) -> date:
    """The run's check date in Asia/Jerusalem: its logical date, or run_after when it has none.

    A scheduled run at 22:00 local checks that day; a backfill of 2025-11-03 checks 2025-11-03;
    a manual run without a logical date checks the local date it was triggered for.
    """
    import pendulum

    moment = context.get("logical_date") or context["dag_run"].run_after
    return pendulum.instance(moment).in_timezone(LOCAL_TZ).date()


def check_run_conf(context: Any) -> None:
    """Refuse a run whose conf carries keys its DAG does not declare as params.

    Airflow merges every conf key into the params, declared or not; the DAG's declared params are
    the whole of what a trigger may set (its knobs, generated from :mod:`premium.settings`, and
    operational switches such as ``dry_run``). Raised as a failure without retries: a retry would
    read the same conf.
    """
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    declared = set(getattr(context.get("dag"), "params", None) or {})
    unknown = sorted(set(conf) - declared)
    if unknown:
        from airflow.sdk.exceptions import AirflowFailException

        deployment = sorted(k for k in unknown if _deployment_setting(k))
        hint = (
            f"; {', '.join(deployment)} are deployment settings (settings file or Variable "
            f"{settings.SETTINGS_VARIABLE}), not run knobs"
            if deployment
            else ""
        )
        raise AirflowFailException(
            f"run conf refused: {', '.join(unknown)} not declared by this DAG (declared: {', '.join(sorted(declared))})"
            f"{hint}; nothing was done"
        )


def _deployment_setting(key: str) -> bool:
    for cls in settings.SECTIONS.values():
        name = key.removeprefix(cls.param_prefix) if cls.param_prefix else key
        if name in cls.model_fields and name not in cls.knobs():
            return True
    return False


def run_settings(context: Any, section: str):
    """The settings of ``section`` for this run: the deployment's, with the run's knobs applied.

    The one override rule of every DAG: conf checked first (:func:`check_run_conf`), then each knob
    param of ``section`` that the run sets (``<prefix><knob>``; null keeps the deployment value).
    A settings error fails the task without retries (a retry would read the same settings); fix the
    settings file or Variable, then clear the task.
    """
    check_run_conf(context)
    params = context.get("params") or {}
    overrides = {
        knob: params[name]
        for name, (sec, knob) in settings.run_param_names(section).items()
        if sec == section and params.get(name) is not None
    }
    try:
        return settings.load(section, overrides)
    except settings.SettingsError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"settings refused: {exc}") from None
