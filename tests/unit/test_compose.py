"""The Docker deployment (docker-compose.yaml, Dockerfile, deploy/): valid for Compose, and it keeps
its contracts (services, mounts, connection ids, DB names, init steps, no literal secrets).

Offline: `docker-compose config` only validates and interpolates the file; no Docker engine is
needed, nothing is built or started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DEPLOY = ROOT / "deploy"

# Required variables (`${VAR:?…}`) with recognisable dummy values, to see where they land.
REQUIRED_VARS = {
    "POSTGRES_PASSWORD": "dummy-pg-password-3b8e",
    "AIRFLOW__CORE__FERNET_KEY": "dummy-fernet-key-91c2",
    "AIRFLOW__API_AUTH__JWT_SECRET": "dummy-jwt-secret-5d0a",
    "AIRFLOW__API__SECRET_KEY": "dummy-api-secret-7f41",
    "BANK_API_KEY": "dummy-bank-api-key-c6e9",
    "PREMIUM_PII_KEYS_JSON": '{"conn_type":"generic","extra":{"current_key_id":"dummy-k1"}}',
    "SMS_CARRIER_API_KEY": "dummy-sms-api-key-4e2d",
    "SMS_WEBHOOK_SECRET": "whsec_ZHVtbXktd2ViaG9vay1zZWNyZXQ=",
}
# Optional variables of the file: unset for the tests whatever the caller's shell holds.
OPTIONAL_VARS = (
    "AIRFLOW_UID",
    "PREMIUM_AIRFLOW_IMAGE",
    "AIRFLOW_API_PORT",
    "AIRFLOW_ADMIN_USERS",
    "SMS_CARRIER_SECONDARY_API_KEY",
    "SMS_CARRIER_SECONDARY_WEBHOOK_SECRET",
    "AIRFLOW_VAR_PREMIUM_SETTINGS",
    "PREMIUM_SETTINGS_FILE",
    "COMPOSE_PROFILES",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
)

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)
LONG_RUNNING_AIRFLOW_SERVICES = AIRFLOW_SERVICES[1:]
SIMULATORS = {
    "core-banking-sim": ("premium.simulators.core_banking", 8443),
    "sms-carrier-sim": ("premium.simulators.sms_carrier", 8444),
    "sms-carrier-sim-secondary": ("premium.simulators.sms_carrier", 8445),
}
# Environment variable names other tools and the code rely on (connection ids are contracts).
CONTRACT_ENV = (
    "AIRFLOW_CONN_PREMIUM_DB",
    "AIRFLOW_CONN_CORE_BANKING",
    "AIRFLOW_CONN_PREMIUM_PII_KEYS",
    "AIRFLOW_CONN_SMS_CARRIER",
    "AIRFLOW_CONN_SMS_CARRIER_SECONDARY",
    "AIRFLOW_CONN_SMS_CARRIER_WEBHOOK",
    "AIRFLOW_CONN_SMS_CARRIER_SECONDARY_WEBHOOK",
    "AIRFLOW_VAR_PREMIUM_SETTINGS",
    "PYTHONPATH",
    "PREMIUM_INCLUDE_DIR",
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__DEFAULT_TIMEZONE",
    "AIRFLOW__CORE__FERNET_KEY",
)
CODE_MOUNTS = {"dags": "/opt/airflow/dags", "plugins": "/opt/airflow/plugins", "include": "/opt/airflow/include"}

SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY|TOKEN|PII_KEYS")
VAR_REF = re.compile(r"(?<!\$)\$\{(\w+)(:?[?-][^}]*)?\}")
ONLY_A_REF = re.compile(r"^\$\{\w+(:[?-][^}]*)?\}$")


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_bin() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose is not on PATH, so the compose file cannot be validated. `make test` installs it "
            "(its setup step runs `apt-get install -y docker-compose`); or install it by hand the same way."
        )
    return path


def _compose(
    compose_bin: str,
    compose_file: Path,
    tmp_dir: Path,
    *args: str,
    drop: str | None = None,
    extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`docker-compose -f FILE config ARGS` with only our dummy variables (no .env, no shell leaks);
    ``extra``: optional variables to set as well."""
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED_VARS and k not in OPTIONAL_VARS}
    env.update({k: v for k, v in REQUIRED_VARS.items() if k != drop})
    env.update(extra or {})
    empty_env_file = tmp_dir / "empty.env"
    empty_env_file.write_text("", encoding="utf-8")
    return subprocess.run(
        [compose_bin, "--env-file", str(empty_env_file), "-f", str(compose_file), "config", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def config(compose_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The file as Compose resolves it (anchors merged, variables interpolated, paths absolute)."""
    result = _compose(compose_bin, COMPOSE_FILE, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    """The file as written (YAML anchors merged, `${VAR}` references not interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only), for both the short (1.29) and the long (v2) volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, "ro" in mode)
        else:
            mounts[volume["target"]] = (volume.get("source", ""), bool(volume.get("read_only")))
    return mounts


def _conn(service: dict, name: str) -> dict:
    return json.loads(service["environment"][name])


def _env_vars_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


# --- Compose validation -------------------------------------------------------------------------


def test_compose_config_is_valid(compose_bin: str, tmp_path: Path) -> None:
    result = _compose(compose_bin, COMPOSE_FILE, tmp_path, "-q")
    assert result.returncode == 0, f"docker-compose rejected {COMPOSE_FILE.name}:\n{result.stderr}"


def _break_depends_on(doc: dict) -> str:
    scheduler = doc["services"]["airflow-scheduler"]
    scheduler["depends_on"] = {**scheduler["depends_on"], "no-such-service": {"condition": "service_healthy"}}
    return "no-such-service"


def _break_invalid_key(doc: dict) -> str:
    doc["services"]["airflow-triggerer"] = {**doc["services"]["airflow-triggerer"], "not_a_compose_option": True}
    return "not_a_compose_option"


@pytest.mark.parametrize(
    ("breaker", "expect_ok"),
    [(None, True), (_break_depends_on, False), (_break_invalid_key, False)],
    ids=["unchanged-copy", "depends_on-missing-service", "invalid-key"],
)
def test_compose_config_check_can_fail(compose_bin: str, tmp_path: Path, breaker, expect_ok: bool) -> None:
    """The same check on a copy of the file: the copy passes, each deliberately broken copy fails."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    culprit = breaker(doc) if breaker else None
    copy = tmp_path / "docker-compose.yaml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    result = _compose(compose_bin, copy, tmp_path, "-q")
    if expect_ok:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0, f"docker-compose accepted a broken file ({culprit})"
        assert culprit in result.stderr


def test_required_variables_are_exactly_the_secrets() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    required = {name for name, modifier in VAR_REF.findall(text) if modifier.startswith(":?")}
    assert required == set(REQUIRED_VARS)


@pytest.mark.parametrize("missing", sorted(REQUIRED_VARS))
def test_compose_refuses_a_missing_secret(compose_bin: str, tmp_path: Path, missing: str) -> None:
    result = _compose(compose_bin, COMPOSE_FILE, tmp_path, "-q", drop=missing)
    assert result.returncode != 0
    assert missing in result.stderr


# --- services, mounts, environment --------------------------------------------------------------


def test_services(config: dict) -> None:
    services = config["services"]
    assert set(services) == {"postgres", *AIRFLOW_SERVICES, *SIMULATORS}
    # LocalExecutor: no Celery machinery from the official file
    assert not {"redis", "airflow-worker", "flower"} & set(services)


def test_airflow_services_mount_the_code_and_share_one_image(config: dict) -> None:
    images = set()
    for name in AIRFLOW_SERVICES:
        service = config["services"][name]
        mounts = _mounts(service)
        for folder, target in CODE_MOUNTS.items():
            assert mounts.get(target) == (str(ROOT / folder), False), (name, target)
            assert (ROOT / folder).is_dir()
        assert mounts["/opt/airflow/logs"][0] == str(ROOT / "logs")
        assert mounts["/opt/airflow/deploy"] == (str(DEPLOY), True), name
        assert Path(service["build"]["context"]) == ROOT, name
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        images.add(service["image"])
    assert len(images) == 1
    assert images.pop().endswith(":3.3.2")


def test_the_archive_is_a_named_volume_on_every_airflow_service(config: dict) -> None:
    """Audit exports outlive the containers: PREMIUM_ARCHIVE_DIR is a named volume, not the writable layer."""
    for name in AIRFLOW_SERVICES:
        service = config["services"][name]
        archive_dir = _env_vars_of(service)["PREMIUM_ARCHIVE_DIR"]
        assert archive_dir.startswith("/"), name
        source, read_only = _mounts(service)[archive_dir]
        assert source == "premium-archive" and not read_only, (name, source)
    assert "premium-archive" in config["volumes"]
    init = config["services"]["airflow-init"]
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    # a fresh named volume is root's: airflow-init (root) hands it to the Airflow user
    assert any("chown" in line and archive_dir in line for line in script.splitlines()), script


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_environment(config: dict, name: str) -> None:
    env = _env_vars_of(config["services"][name])
    assert set(CONTRACT_ENV) <= set(env), sorted(set(CONTRACT_ENV) - set(env))
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__DEFAULT_TIMEZONE"] == "Asia/Jerusalem"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["PYTHONPATH"] == "/opt/airflow/plugins"
    assert env["PREMIUM_INCLUDE_DIR"] == "/opt/airflow/include"
    assert env["AIRFLOW__CORE__FERNET_KEY"] == REQUIRED_VARS["AIRFLOW__CORE__FERNET_KEY"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == REQUIRED_VARS["AIRFLOW__API_AUTH__JWT_SECRET"]
    pg_password = REQUIRED_VARS["POSTGRES_PASSWORD"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        f"postgresql+psycopg2://premium:{pg_password}@postgres:5432/premium_airflow"
    )

    service = config["services"][name]
    premium_db = _conn(service, "AIRFLOW_CONN_PREMIUM_DB")
    assert premium_db == {
        "conn_type": "postgres",
        "host": "postgres",
        "port": 5432,
        "login": "premium",
        "password": pg_password,
        "schema": "premium_app",
    }
    assert _conn(service, "AIRFLOW_CONN_CORE_BANKING") == {
        "conn_type": "http",
        "host": "core-banking-sim",
        "port": 8443,
        "schema": "http",
        "password": REQUIRED_VARS["BANK_API_KEY"],
        "extra": {"auth_type": "api_key", "allow_plain_http": True},  # the simulator, on the compose network
    }
    assert env["AIRFLOW_CONN_PREMIUM_PII_KEYS"] == REQUIRED_VARS["PREMIUM_PII_KEYS_JSON"]
    for conn_var, (host, port) in {
        "AIRFLOW_CONN_SMS_CARRIER": ("sms-carrier-sim", 8444),
        "AIRFLOW_CONN_SMS_CARRIER_SECONDARY": ("sms-carrier-sim-secondary", 8445),
    }.items():
        conn = _conn(service, conn_var)
        assert (conn["conn_type"], conn["host"], conn["port"]) == ("http", host, port)
    # optional, and valid JSON when not set ("null" = no overrides)
    assert json.loads(env["AIRFLOW_VAR_PREMIUM_SETTINGS"]) is None


def test_airflow_services_wait_for_init_and_postgres_only(config: dict) -> None:
    services = config["services"]
    for name in LONG_RUNNING_AIRFLOW_SERVICES:
        assert services[name]["depends_on"] == {
            "airflow-init": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
        }, name
    assert services["airflow-init"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in AIRFLOW_SERVICES:
        assert "profiles" not in services[name]


def test_init_migrates_and_creates_pools(config: dict) -> None:
    init = config["services"]["airflow-init"]
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    steps = [
        "airflow db migrate",
        "airflow pools import /opt/airflow/deploy/pools.json",
        "python -m premium.cli migrate",
    ]
    positions = [script.find(step) for step in steps]
    assert all(p >= 0 for p in positions), dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions), "metadata DB first, then pools, then the application schema"
    assert "set -euo pipefail" in script  # a failing step fails the init, which blocks the other services
    assert init.get("restart", "no") == "no"


def test_apiserver_port_and_health(config: dict) -> None:
    api = config["services"]["airflow-apiserver"]
    assert api["command"] == "api-server"
    ports = api["ports"]
    assert any((p.get("target") if isinstance(p, dict) else str(p).split(":")[-1]) in (8080, "8080") for p in ports)
    assert "http://localhost:8080/api/v2/monitor/health" in api["healthcheck"]["test"]


def test_postgres_databases(config: dict) -> None:
    postgres = config["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    env = _env_vars_of(postgres)
    assert env["POSTGRES_DB"] == "premium_airflow"
    assert env["POSTGRES_USER"] == "premium"
    assert env["POSTGRES_PASSWORD"] == REQUIRED_VARS["POSTGRES_PASSWORD"]
    init_dir = _mounts(postgres)["/docker-entrypoint-initdb.d"][0]
    assert Path(init_dir) == DEPLOY / "postgres-init"
    scripts = "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(init_dir).glob("*.sql")))
    assert re.search(r"^CREATE DATABASE premium_app;", scripts, re.MULTILINE)
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_simulators_are_in_their_profile(config: dict) -> None:
    services = config["services"]
    for name, (module, port) in SIMULATORS.items():
        sim = services[name]
        assert sim["profiles"] == ["simulators"], name
        command = sim["command"] if isinstance(sim["command"], list) else sim["command"].split()
        assert command[:3] == ["python", "-m", module], name
        assert command[command.index("--port") + 1] == str(port)
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert f"http://localhost:{port}/_sim/health" in sim["healthcheck"]["test"]
        assert _mounts(sim)["/opt/airflow/plugins"][0] == str(ROOT / "plugins")
        assert _env_vars_of(sim)["PYTHONPATH"] == "/opt/airflow/plugins"
        assert sim["image"] == services["airflow-scheduler"]["image"]
    bank = services["core-banking-sim"]
    assert bank["command"][bank["command"].index("--auth") + 1] == "api_key"
    assert bank["command"][bank["command"].index("--secret-env") + 1] == "BANK_SIM_SECRET"
    assert _env_vars_of(bank)["BANK_SIM_SECRET"] == REQUIRED_VARS["BANK_API_KEY"]
    for name, role in (("sms-carrier-sim", "primary"), ("sms-carrier-sim-secondary", "secondary")):
        command = services[name]["command"]
        assert command[command.index("--name") + 1] == role
        assert command[command.index("--secret-env") + 1] == "SMS_SIM_SECRET"
    assert _env_vars_of(services["sms-carrier-sim"])["SMS_SIM_SECRET"] == REQUIRED_VARS["SMS_CARRIER_API_KEY"]


def test_each_carrier_signs_its_callbacks_with_its_own_secret(compose_bin: str, tmp_path: Path) -> None:
    """sms_carrier_webhook / sms_carrier_secondary_webhook on every Airflow service (the API server
    verifies with them), each simulator signing with its carrier's secret, never the other's."""
    secondary_secret = "whsec_ZHVtbXktc2Vjb25kYXJ5LXdlYmhvb2s="
    result = _compose(
        compose_bin, COMPOSE_FILE, tmp_path, extra={"SMS_CARRIER_SECONDARY_WEBHOOK_SECRET": secondary_secret}
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in AIRFLOW_SERVICES:
        primary = _conn(services[name], "AIRFLOW_CONN_SMS_CARRIER_WEBHOOK")
        secondary = _conn(services[name], "AIRFLOW_CONN_SMS_CARRIER_SECONDARY_WEBHOOK")
        assert primary == {"conn_type": "generic", "password": REQUIRED_VARS["SMS_WEBHOOK_SECRET"]}, name
        assert secondary == {"conn_type": "generic", "password": secondary_secret}, name
    for name, secret in (
        ("sms-carrier-sim", REQUIRED_VARS["SMS_WEBHOOK_SECRET"]),
        ("sms-carrier-sim-secondary", secondary_secret),
    ):
        command = services[name]["command"]
        variable = command[command.index("--webhook-secret-env") + 1]
        assert _env_vars_of(services[name])[variable] == secret, name


# --- no literal secrets -------------------------------------------------------------------------


def _is_reference(value: str) -> bool:
    return bool(ONLY_A_REF.match(value))


def test_no_literal_secrets_in_the_file(raw: dict) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for dummy in REQUIRED_VARS.values():
        assert dummy not in text
    # a secret-looking variable never gets a non-empty default
    for name, modifier in VAR_REF.findall(text):
        if SECRET_NAME.search(name) and modifier.startswith(":-"):
            assert modifier == ":-", f"${{{name}{modifier}}}: a default secret value"
    # user:password@ in URIs only through a reference
    for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", text):
        assert _is_reference(password), password

    checked = 0
    for service_name, service in raw["services"].items():
        for key, value in _env_vars_of(service).items():
            value = "" if value is None else str(value)
            where = f"{service_name}: {key}"
            if key.startswith("AIRFLOW_CONN_"):
                if _is_reference(value):
                    checked += 1
                    continue
                conn = json.loads(value)
                assert "password" not in conn or _is_reference(conn["password"]), where
                assert not any(SECRET_NAME.search(k.upper()) for k in conn.get("extra", {})), where
                checked += 1
            elif SECRET_NAME.search(key):
                assert _is_reference(value), f"{where} must be a ${{VAR}} reference, not a literal"
                checked += 1
    assert checked >= 8 * len(AIRFLOW_SERVICES) + 2  # 5 connections + 3 keys each; postgres; simulator


def test_env_example_documents_every_variable_without_values() -> None:
    example = (DEPLOY / "airflow.env.example").read_text(encoding="utf-8")
    assignments = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#") and "=" in line
    )
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    used = {name for name, _ in VAR_REF.findall(COMPOSE_FILE.read_text(encoding="utf-8"))}
    assert used <= documented, sorted(used - documented)
    for name in REQUIRED_VARS:
        assert assignments.get(name) == "", f"{name}: placeholder must be empty so Compose refuses to start"
    assert all(value == "" for name, value in assignments.items() if SECRET_NAME.search(name))


# --- deploy/ files, Dockerfile, requirements ----------------------------------------------------


def test_pools_file() -> None:
    pools = json.loads((DEPLOY / "pools.json").read_text(encoding="utf-8"))
    assert set(pools) == {"core_banking_api"}
    pool = pools["core_banking_api"]
    assert pool["slots"] == 4
    assert pool["description"].strip()


def test_settings_example_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from premium import settings

    monkeypatch.setattr(settings, "_variable_json", lambda: None)
    monkeypatch.setenv(settings.SETTINGS_FILE_ENV, str(DEPLOY / "settings.example.json"))
    example = json.loads((DEPLOY / "settings.example.json").read_text(encoding="utf-8"))
    assert set(example) <= set(settings.SECTIONS)
    for section in example:
        assert settings.load(section) is not None


def test_settings_variable_default_null_means_no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose file's default AIRFLOW_VAR_PREMIUM_SETTINGS=null must be accepted as 'none'."""
    from premium import settings

    monkeypatch.delenv(settings.SETTINGS_FILE_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_PREMIUM_SETTINGS", "null")
    # no Airflow import (seconds): the settings module then reads the same value from the environment
    monkeypatch.setitem(sys.modules, "airflow.sdk", None)
    assert settings._variable_json() is None
    assert settings.load_balance() == settings.BalanceSettings()


def test_dockerfile() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line for line in lines if line.upper().startswith("FROM ")]
    assert froms == ["FROM apache/airflow:3.3.2-python3.11"]
    copies = [line for line in lines if line.upper().startswith(("COPY ", "ADD "))]
    assert copies == ["COPY requirements.txt /requirements.txt"], "the code is mounted, not copied"
    assert "RUN pip install --no-cache-dir -r /requirements.txt" in lines


def test_requirements_pin_airflow_of_the_image() -> None:
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    assert "apache-airflow==3.3.2" in pins
