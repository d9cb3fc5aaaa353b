"""What a trigger may change: settings declared once, per-run knobs only, values that reach customers checked."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from premium import runtime, settings
from premium.settings import RetentionSettings, SettingsError, SmsSettings

ROOT = Path(__file__).resolve().parents[2]

# What the issue found a trigger could change; none of it may be a run's.
DEPLOYMENT_ONLY = {
    "threshold_nis",
    "skip_on_outage",
    "sms_bank_name",
    "sms_callback_url",
    "sms_send_time",
    "sms_send_window_end",
    "sms_no_send_days",
    "sms_max_lag_days",
    "sms_send_offset_days",
    "sms_window_days",
    "sms_min_passing_checks",
    "window_s",
}


def _context(conf: dict, declared: dict, params: dict | None = None) -> dict:
    return {
        "dag_run": SimpleNamespace(conf=conf),
        "dag": SimpleNamespace(params=declared),
        "params": {**dict.fromkeys(declared), **conf, **(params or {})},  # as a task sees them: resolved
    }


def test_dag_params_are_the_models_knobs_and_nothing_that_reaches_customers(monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    daily = set(bag.dags["premium_balance_daily"].params)
    tracking = set(bag.dags["premium_delivery_tracking"].params)
    assert daily == set(settings.run_param_names("balance", "sms")) | {"dry_run"}
    assert tracking == set(settings.run_param_names("delivery")) | {"campaign_id", "batch_ids"}
    assert set(bag.dags["premium_maintenance"].params) == set()
    assert not (daily | tracking) & DEPLOYMENT_ONLY


def test_every_generated_param_carries_the_models_range() -> None:
    params = settings.run_params("balance", "sms")
    assert params["chunk_size"].schema["maximum"] == 10_000 and params["chunk_size"].schema["minimum"] == 1
    assert params["sms_batch_size"].schema["minimum"] == 500
    assert params["request_timeout_s"].schema["exclusiveMinimum"] == 0
    assert params["chunk_size"].value is None  # null: keep the deployment's value
    with pytest.raises(Exception, match="10001"):  # Airflow validates the trigger form against it
        params["chunk_size"].resolve(10_001)


@pytest.mark.parametrize(
    "conf",
    [
        {"sms_bank_name": "Bank - verify at evil dot example"},
        {"sms_callback_url": "https://collector.example/hook"},
        {"threshold_nis": 1},
        {"sms_no_send_days": ""},
        {"chunk_sise": 10},  # a typo is refused too, not ignored
    ],
)
def test_a_run_conf_key_the_dag_does_not_declare_fails_the_run(conf) -> None:
    declared = settings.run_params("balance", "sms")
    with pytest.raises(AirflowFailException, match="run conf refused") as err:
        runtime.run_settings(_context(conf, declared), "balance")
    assert next(iter(conf)) in str(err.value) and "nothing was done" in str(err.value)
    if next(iter(conf)) != "chunk_sise":
        assert "deployment settings" in str(err.value)
    for value in conf.values():  # the hostile value itself is not repeated in the log
        assert str(value) not in str(err.value) or str(value) in ("1", "")


def test_run_settings_apply_the_sections_knobs_only(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"sms": {"bank_name": "Hapoalim Premium"}}))
    declared = settings.run_params("balance", "sms")
    ctx = _context({"sms_batch_size": 800, "in_flight": 7}, declared)
    sms = runtime.run_settings(ctx, "sms")
    balance = runtime.run_settings(ctx, "balance")
    assert (sms.batch_size, sms.bank_name) == (800, "Hapoalim Premium")
    assert (balance.in_flight, balance.chunk_size) == (7, 1000)


def test_a_deployment_setting_is_refused_as_a_run_override_even_by_direct_call() -> None:
    with pytest.raises(SettingsError, match="sms settings bank_name, callback_url belong to the deployment"):
        settings.load_sms({"bank_name": "x", "callback_url": "https://x.example/", "batch_size": 600})


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://premium.bank.example/premium/api/webhooks/sms-delivery", True),
        ("HTTPS://premium.bank.example/hooks", True),
        ("http://127.0.0.1:8080/premium/api/webhooks/sms-delivery", True),
        ("http://localhost:8080/hooks", True),
        ("http://[::1]:8080/hooks", True),
        ("http://premium.bank.example/hooks", False),  # phone numbers in clear over the internet
        ("http://10.0.0.5/hooks", False),
        ("ftp://premium.bank.example/hooks", False),
        ("https://user:pw@premium.bank.example/hooks", False),
        ("https://premium.bank.example/hooks?next=https://evil.example", False),
        ("/premium/api/webhooks", False),
    ],
)
def test_callback_url_is_https_or_loopback_http(url, ok) -> None:
    if ok:
        assert SmsSettings(callback_url=url).callback_url == url
    else:
        with pytest.raises(SettingsError, match="callback_url must"):
            SmsSettings(callback_url=url)


def test_plain_http_to_a_private_host_needs_the_deployment_to_name_it() -> None:
    url = "http://airflow-apiserver:8080/premium/api/webhooks/sms-delivery"
    with pytest.raises(SettingsError, match="callback_plain_http_hosts"):
        SmsSettings(callback_url=url)
    assert SmsSettings(callback_url=url, callback_plain_http_hosts=["airflow-apiserver"]).callback_url == url


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("Premium Bank", True),
        ("Bank Leumi", True),
        ("בנק הפועלים", True),
        ("A&B Bank", True),
        ("O'Neil-Bank 1", True),
        ("", False),
        ("Bank. Verify at evil-bank", False),
        ("bank.example", False),
        ("https://evil.example", False),
        ("Bank <b>", False),
        ("Bank\nline", False),
        (" Bank", False),
        ("x" * 31, False),
    ],
)
def test_bank_name_is_short_plain_text(name, ok) -> None:
    if ok:
        assert SmsSettings(bank_name=name).bank_name == name
    else:
        with pytest.raises(SettingsError, match="sms.bank_name: bank_name must be") as err:
            SmsSettings(bank_name=name)
        if name:
            assert name not in str(err.value)  # a hostile value is not echoed


def test_customer_facing_values_are_checked_again_before_the_outbox(monkeypatch) -> None:
    s = SmsSettings()
    s.check_customer_facing()
    forged = s.model_construct(**{**s.model_dump(), "bank_name": "evil.example"})  # bypassed validation
    with pytest.raises(SettingsError, match="bank_name"):
        forged.check_customer_facing()


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"events_hot_days": 1}, r"retention.events_hot_days: Input should be greater than or equal to 90"),
        ({"archive_years": 1}, r"retention.archive_years: Input should be greater than or equal to 7"),
        ({"audit_hot_days": 1}, r"retention.audit_hot_days: Input should be greater than or equal to 31"),
    ],
)
def test_retention_floors_hold_whatever_the_deployment_says(monkeypatch, layer, message) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", json.dumps({"retention": layer}))
    with pytest.raises(SettingsError, match=message):
        settings.load_retention()
    monkeypatch.delenv("AIRFLOW_VAR_PREMIUM_SETTINGS")
    with pytest.raises(SettingsError, match="belong to the deployment"):
        settings.load("retention", layer)


def test_retention_defaults_and_archive_location(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_PREMIUM_SETTINGS", raising=False)
    monkeypatch.setenv("PREMIUM_ARCHIVE_DIR", str(tmp_path))
    r = settings.load_retention()
    assert (r.events_hot_days, r.audit_hot_days, r.archive_years) == (90, 365, 7)
    assert r.archive_path() == tmp_path
    assert RetentionSettings(archive_dir="/srv/archive").archive_path() == Path("/srv/archive")


def test_the_configuration_page_is_generated_from_the_model() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    begin, end = "<!-- settings-reference:begin -->\n", "<!-- settings-reference:end -->"
    block = page[page.index(begin) + len(begin) : page.index(end)]
    assert block == settings.reference_markdown(), (
        "docs/configuration.md is out of date: python -m premium.cli settings-reference --write docs/configuration.md"
    )
