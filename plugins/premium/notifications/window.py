"""The send window (§4.2): when a check date's SMS may go out, and whether they may go at all.

Two rules, both enforced by the submission engine before every POST, whoever runs it:

- a day's window: on a send day (not one of ``no_send_days``), from ``send_time`` to
  ``send_window_end`` Asia/Jerusalem. Nothing is POSTed outside it: first sends, retries and
  resubmissions alike wait for the next open window;
- a check date's batches go out no earlier than :func:`send_after` (the morning after D): a batch
  prepared the evening before is not sent by a tracking run that happens to be polling.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from premium.settings import WEEKDAYS, SmsSettings

LOCAL_TZ = ZoneInfo("Asia/Jerusalem")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")

SEND = "SEND"
DRY_RUN = "DRY_RUN"
LATE_NO_SEND = "LATE_NO_SEND"


def campaign_id_for(check_date: date) -> str:
    """premium-monthly-<mon>-<yyyy> of the check date's calendar month (§3.2)."""
    return f"premium-monthly-{MONTHS[check_date.month - 1]}-{check_date.year}"


def send_after(check_date: date, settings: SmsSettings) -> datetime:
    """The first allowed send moment: D + offset at send_time local, skipping no-send days."""
    day = check_date + timedelta(days=settings.send_offset_days)
    while WEEKDAYS[day.weekday()] in settings.no_send_days:
        day += timedelta(days=1)
    hh, mm, ss = (int(p) for p in settings.send_time.split(":"))
    return datetime.combine(day, time(hh, mm, ss), tzinfo=LOCAL_TZ)


def _clock(value: str) -> time:
    hh, mm, ss = (int(p) for p in value.split(":"))
    return time(hh, mm, ss)


def is_open(moment: datetime, settings: SmsSettings) -> bool:
    """Whether ``moment`` (aware) is inside a send window: a send day, between send_time and send_window_end."""
    local = moment.astimezone(LOCAL_TZ)
    if WEEKDAYS[local.weekday()] in settings.no_send_days:
        return False
    return _clock(settings.send_time) <= local.time() < _clock(settings.send_window_end)


def next_open(moment: datetime, settings: SmsSettings) -> datetime:
    """``moment`` itself when the window is open, else the next moment it opens."""
    if is_open(moment, settings):
        return moment
    local = moment.astimezone(LOCAL_TZ)
    day = local.date() if local.time() < _clock(settings.send_time) else local.date() + timedelta(days=1)
    while WEEKDAYS[day.weekday()] in settings.no_send_days:
        day += timedelta(days=1)
    return datetime.combine(day, _clock(settings.send_time), tzinfo=LOCAL_TZ)


def may_send(check_date: date, moment: datetime, settings: SmsSettings) -> bool:
    """Whether a batch of ``check_date`` may be POSTed at ``moment``: its first morning has come and the window is open."""
    return moment >= send_after(check_date, settings) and is_open(moment, settings)


def decide_mode(
    check_date: date, decided_at: datetime, settings: SmsSettings, *, dry_run: bool, late_send_authorised: bool = False
) -> str:
    """SEND, DRY_RUN, or LATE_NO_SEND when D is older than max_lag_days at decision time (unless an
    operator authorised that date: :mod:`premium.late_send`).

    The one place the wall clock matters: whether SMS for a past date may still go out is a
    question about today, not about the data (the as-of date itself always comes from the run).
    """
    if dry_run:
        return DRY_RUN
    if is_late(check_date, decided_at, settings) and not late_send_authorised:
        return LATE_NO_SEND
    return SEND


def is_late(check_date: date, decided_at: datetime, settings: SmsSettings) -> bool:
    """D is older than max_lag_days on the local date of ``decided_at``."""
    return (decided_at.astimezone(LOCAL_TZ).date() - check_date).days > settings.max_lag_days
