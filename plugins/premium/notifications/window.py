"""The send window (§4.2): when a check date's SMS may go out, and whether they may go at all."""

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


def decide_mode(check_date: date, decided_at: datetime, settings: SmsSettings, *, dry_run: bool) -> str:
    """SEND, DRY_RUN, or LATE_NO_SEND when D is older than max_lag_days at decision time.

    The one place the wall clock matters: whether SMS for a past date may still go out is a
    question about today, not about the data (the as-of date itself always comes from the run).
    """
    if dry_run:
        return DRY_RUN
    today_local = decided_at.astimezone(LOCAL_TZ).date()
    if (today_local - check_date).days > settings.max_lag_days:
        return LATE_NO_SEND
    return SEND
