"""The container setup (docker-compose.yml, Dockerfile, .dockerignore, the init
scripts in docker/ and scripts/new-env.sh), checked without a Docker engine.

``docker-compose config`` validates and resolves the compose file the way
``docker compose up`` would. The tests check the secure defaults (ports on
loopback only, no shipped secrets, a password on Redis, least-privilege roles,
memory limits), that every documented setting reaches the roles that use it,
the healthchecks (the worker's, beat's and Flower's run here against real
processes), the source seed, the scalable worker, the commands (and that the
modules they name import here), a non-root image with a cached dependency
layer, the database roles the init scripts create (run on the real
PostgreSQL) and the `.env` that scripts/new-env.sh writes.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
READONLY_SCRIPT = ROOT / "docker" / "source-readonly.sh"
APP_ROLE_SCRIPT = ROOT / "docker" / "target-app-role.sh"
NEW_ENV_SCRIPT = ROOT / "scripts" / "new-env.sh"
README = ROOT / "README.md"
CONTAINERS_DOC = ROOT / "docs" / "containers.md"
ENV_EXAMPLE = ROOT / ".env.example"

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Redis database of the real processes started here (not the suite's 15): their
# control broadcasts reach no other test's workers.
PROBE_BROKER_URL = f"{REDIS_BASE_URL}/13"

APP_SERVICES = ("api", "worker", "beat", "flower")
# Prometheus runs only with `--profile monitoring`; the rest always.
MONITORING = {"prometheus"}
SERVICES = {"postgres_source", "postgres_target", "redis", *APP_SERVICES, *MONITORING}
COMMANDS = {
    "api": "python -m api.serve",
    "worker": "celery -A workers worker",
    "beat": "celery -A scheduler beat",
    "flower": "celery -A windfarm.queue flower",
}
INSTALL_HINT = "apt-get install -y docker-compose"

# The secrets compose refuses to start without, with values for the tests.
SECRETS = {
    "POSTGRES_PASSWORD": "pgSuper1",
    "SOURCE_READONLY_PASSWORD": "srcRead2",
    "TARGET_APP_PASSWORD": "tgtApp3",
    "REDIS_PASSWORD": "redisPw4",
    "FLOWER_BASIC_AUTH": "ops:flowerPw5",
}
BROKER_URL = f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"

# The roles that get the application's settings (README.md, "Configuration").
SETTINGS_ROLES = ("api", "worker", "beat")
# Settings that carry a credential go only where they are needed.
CREDENTIAL_SETTINGS = {
    "SOURCE_DATABASE_URL": {"api"},
    "TARGET_DATABASE_URL": {"api", "worker"},
    "CELERY_BROKER_URL": set(APP_SERVICES),
    "API_TOKEN": {"api"},
    "FLOWER_BASIC_AUTH": {"flower"},
}
# Addresses on compose's network, set by the compose file: a `.env` written for
# `make run` (localhost URLs) must not point the containers elsewhere.
FIXED_SETTINGS = {"SOURCE_DATABASE_URL", "TARGET_DATABASE_URL", "CELERY_BROKER_URL", "API_BASE_URL"}
# Settings the compose file passes beyond the README's table (being added to it).
EXTRA_SETTINGS = (
    "ALLOWED_HOSTS",
    "ETL_MAX_OPEN_SLICES",
    "API_DATA_BUDGET_BYTES",
    "API_SEND_TIMEOUT_S",
    "API_HEADER_TIMEOUT_S",
    "API_MAX_CONNECTIONS",
    "API_KEEP_ALIVE_S",
)


# --- helpers ------------------------------------------------------------------


def _compose_cli() -> list[str]:
    """The compose CLI: the Debian `docker-compose` (v1) or the v2 plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(f"neither `docker-compose` nor `docker compose` is installed; run `{INSTALL_HINT}`")


def _clean_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


def _compose_config(tmp_path: Path, variables: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker-compose config`` with exactly ``variables`` set.

    The environment is cleared and an explicit env file replaces any `.env`, so
    neither the developer's shell nor their `.env` changes what is checked.
    """
    env_file = tmp_path / f"compose-{uuid.uuid4().hex[:8]}.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
    command = [*_compose_cli(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=_clean_env(tmp_path)
    )


def _parse_config(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, (
        f"`{shlex.join(result.args)}` rejected the compose file:\n{result.stderr}"
    )
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict) and "services" in config, result.stdout
    return config


def _resolved_config(tmp_path: Path, **overrides: str) -> dict:
    """The resolved compose file, with :data:`SECRETS` and ``overrides`` set."""
    return _parse_config(_compose_config(tmp_path, {**SECRETS, **overrides}))


def _raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _env(service: dict) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list form."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(
            item.split("=", 1) if "=" in item else (item, "") for item in environment
        )
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def _argv(service: dict) -> list[str]:
    command = service.get("command", "")
    return [str(part) for part in command] if isinstance(command, list) else shlex.split(command)


def _command(service: dict) -> str:
    return shlex.join(_argv(service))


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in ``argv``."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _bindings(service: dict) -> set[tuple[str, int]]:
    """Published (host address, host port) pairs, from the short or the long syntax."""
    bindings = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            bindings.add((port.get("host_ip") or "0.0.0.0", int(port.get("published") or 0)))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 3:
            bindings.add((parts[0] or "0.0.0.0", int(parts[1])))
        elif len(parts) == 2:
            bindings.add(("0.0.0.0", int(parts[0])))
        else:  # a container port alone: a random host port on every address
            bindings.add(("0.0.0.0", 0))
    return bindings


def _healthcheck(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


def _healthcheck_shell(service: dict) -> str:
    """A healthcheck as a shell command line, with compose's `$$` escapes undone."""
    test = (service.get("healthcheck") or {}).get("test")
    assert isinstance(test, list) and test and test[0] in {"CMD", "CMD-SHELL"}, test
    line = test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])
    return line.replace("$$", "$")


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
}


def _bytes(value: object) -> int:
    """Bytes of a Docker (``512m``) or Redis (``256mb``) memory size."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?b?)\s*", str(value).lower())
    assert match, f"{value!r} is not a memory size"
    return int(match.group(1)) * _UNITS[match.group(2)]


def _memory_limit(service: dict) -> int | None:
    limit = service.get("mem_limit")
    if limit is None:
        resources = (service.get("deploy") or {}).get("resources") or {}
        limit = (resources.get("limits") or {}).get("memory")
    return None if limit is None else _bytes(limit)


def _strings(node: object):
    """Every string in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif node is not None:
        yield str(node)


def _init_scripts(service: dict) -> list[str]:
    """Host paths mounted into /docker-entrypoint-initdb.d, in the order they run."""
    init = {}
    for mount in service.get("volumes", []):
        host, container, *mode = mount.split(":")
        if container.startswith("/docker-entrypoint-initdb.d/"):
            assert mode == ["ro"], f"{mount} should be read-only"
            init[Path(container).name] = host.removeprefix("./")
    return [init[name] for name in sorted(init)]


def _readme_settings() -> list[str]:
    """The variables of README.md's configuration table."""
    readme = README.read_text(encoding="utf-8")
    assert "\n## Configuration" in readme, "README.md has no Configuration section"
    section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("|"):
            names += re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1])
    assert len(names) >= 10, f"README.md's configuration table looks empty: {names}"
    return names


def _default_of(expression: str) -> str:
    """The default of a ``${NAME:-default}`` expression."""
    match = re.fullmatch(r"\$\{(\w+):-(.*)\}", expression)
    assert match, f"{expression!r} is not a ${{NAME:-default}} variable"
    return match.group(2)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [(text_.split(None, 1)[0].upper(), text_.split(None, 1)[1]) for text_ in logical]


def _copy_sources(arguments: str) -> list[str]:
    parts = [part for part in arguments.split() if not part.startswith("--")]
    return [source.rstrip("/").removeprefix("./") for source in parts[:-1]]


def _probe_env(home: Path, **variables: str) -> dict[str, str]:
    """A container-like environment for a real process here: only ``variables``,
    plus PATH (this interpreter's bin first, so `celery` is this project's)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {"PATH": path, "HOME": str(home), "PYTHONUNBUFFERED": "1", **variables}


# --- docker-compose config: what it resolves to ------------------------------------


def test_compose_config_resolves_with_the_secrets(tmp_path: Path) -> None:
    services = _resolved_config(tmp_path)["services"]
    assert set(services) == SERVICES

    api_env = _env(services["api"])
    assert api_env["SOURCE_DATABASE_URL"] == (
        "postgresql+psycopg2://windfarm_reader:srcRead2@postgres_source:5432/source_db"
    )
    assert api_env["TARGET_DATABASE_URL"] == (
        "postgresql+psycopg2://windfarm_app:tgtApp3@postgres_target:5432/target_db"
    )
    assert _env(services["worker"])["TARGET_DATABASE_URL"] == api_env["TARGET_DATABASE_URL"]
    assert api_env["API_BASE_URL"] == "http://api:8000"
    assert api_env["API_TOKEN"] == ""
    assert api_env["ETL_HOURLY_CRON"] == "5 * * * *"
    assert api_env["ETL_DAILY_CRON"] == "0 2 * * *"
    assert _env(services["flower"])["FLOWER_BASIC_AUTH"] == "ops:flowerPw5"
    for name in APP_SERVICES:
        assert _env(services[name])["CELERY_BROKER_URL"] == BROKER_URL, name


@pytest.mark.parametrize("blank", [False, True], ids=["unset", "empty"])
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_secret(
    tmp_path: Path, secret: str, blank: bool
) -> None:
    variables = dict(SECRETS)
    if blank:
        variables[secret] = ""
    else:
        del variables[secret]
    result = _compose_config(tmp_path, variables)
    assert result.returncode != 0, f"compose accepted a missing {secret}:\n{result.stdout}"
    assert secret in result.stderr and "scripts/new-env.sh" in result.stderr, result.stderr


def test_compose_env_file_overrides_credentials(tmp_path: Path) -> None:
    config = _resolved_config(
        tmp_path,
        POSTGRES_USER="etl",
        POSTGRES_PASSWORD="s3cret",
        SOURCE_READONLY_USER="viewer",
        SOURCE_READONLY_PASSWORD="r3ad",
        TARGET_APP_USER="writer",
        TARGET_APP_PASSWORD="wr1te",
        REDIS_PASSWORD="br0ker",
        API_TOKEN="tok",
        FLOWER_BASIC_AUTH="ops:hunter2",
        ETL_HOURLY_CRON="15 * * * *",
    )
    services = config["services"]
    for database in ("postgres_source", "postgres_target"):
        env = _env(services[database])
        assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == ("etl", "s3cret"), database
    source_env = _env(services["postgres_source"])
    assert (source_env["SOURCE_READONLY_USER"], source_env["SOURCE_READONLY_PASSWORD"]) == (
        "viewer",
        "r3ad",
    )
    target_env = _env(services["postgres_target"])
    assert (target_env["TARGET_APP_USER"], target_env["TARGET_APP_PASSWORD"]) == (
        "writer",
        "wr1te",
    )
    worker_env = _env(services["worker"])
    assert worker_env["TARGET_DATABASE_URL"].startswith("postgresql+psycopg2://writer:wr1te@")
    assert worker_env["CELERY_BROKER_URL"] == "redis://:br0ker@redis:6379/0"
    assert worker_env["ETL_HOURLY_CRON"] == "15 * * * *"
    api_env = _env(services["api"])
    assert api_env["API_TOKEN"] == "tok"
    assert api_env["SOURCE_DATABASE_URL"].startswith(
        "postgresql+psycopg2://viewer:r3ad@postgres_source:5432/"
    )
    assert _env(services["flower"])["FLOWER_BASIC_AUTH"] == "ops:hunter2"


def test_compose_publishes_on_loopback_by_default(tmp_path: Path) -> None:
    services = _resolved_config(tmp_path)["services"]
    assert {name: _bindings(service) for name, service in services.items()} == {
        "postgres_source": {("127.0.0.1", 5433)},
        "postgres_target": {("127.0.0.1", 5434)},
        "redis": set(),
        "api": {("127.0.0.1", 8000)},
        "worker": set(),
        "beat": set(),
        "flower": {("127.0.0.1", 5555)},
        "prometheus": {("127.0.0.1", 9090)},
    }


def test_compose_bind_address_and_port_are_settings(tmp_path: Path) -> None:
    services = _resolved_config(
        tmp_path,
        API_BIND="0.0.0.0",
        API_PORT="18000",
        FLOWER_BIND="10.1.2.3",
        FLOWER_PORT="15555",
    )["services"]
    assert _bindings(services["api"]) == {("0.0.0.0", 18000)}
    assert _bindings(services["flower"]) == {("10.1.2.3", 15555)}
    # The databases stay on loopback whatever the API and Flower do.
    assert _bindings(services["postgres_source"]) == {("127.0.0.1", 5433)}
    assert _bindings(services["postgres_target"]) == {("127.0.0.1", 5434)}


def test_redis_requires_a_password_and_refuses_when_full(tmp_path: Path) -> None:
    config = _resolved_config(tmp_path)
    redis = config["services"]["redis"]
    argv = _argv(redis)
    assert argv[0] == "redis-server", argv
    assert _option(argv, "--requirepass") == SECRETS["REDIS_PASSWORD"]
    assert _option(argv, "--maxmemory-policy") == "noeviction"
    maxmemory = _option(argv, "--maxmemory")
    assert maxmemory, "Redis needs --maxmemory"
    limit = _memory_limit(redis)
    assert limit and _bytes(maxmemory) < limit, (maxmemory, limit)
    # The healthcheck authenticates (redis-cli reads REDISCLI_AUTH), or it would
    # get NOAUTH and never report healthy.
    assert "redis-cli ping" in _healthcheck(redis)
    assert _env(redis)["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]

    urls = [url for value in _strings(config) for url in re.findall(r"redis://[^\s'\"]*", value)]
    assert len(urls) >= len(APP_SERVICES), urls
    for url in urls:
        assert url.startswith(f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/"), url


def test_flower_gets_only_the_broker_url(tmp_path: Path) -> None:
    flower = _resolved_config(tmp_path)["services"]["flower"]
    env = _env(flower)
    # Its login and the queue name (for its broker view) besides the broker:
    # no database URL, no API token.
    assert set(env) == {"CELERY_BROKER_URL", "FLOWER_BASIC_AUTH", "ETL_QUEUE"}, env
    assert env["CELERY_BROKER_URL"] == BROKER_URL
    everything = json.dumps(flower)
    for name in ("POSTGRES_PASSWORD", "SOURCE_READONLY_PASSWORD", "TARGET_APP_PASSWORD"):
        assert SECRETS[name] not in everything, f"flower holds {name}"
    assert _command(flower).startswith("celery -A windfarm.queue flower")


def test_flower_app_imports_no_task_code() -> None:
    code = (
        "import sys, windfarm.queue; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'workers', 'scheduler', 'api', 'numpy', 'sqlalchemy', 'psycopg2'}); "
        "sys.exit(f'imports {bad}' if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_app_reaches_the_target_as_the_application_role(tmp_path: Path) -> None:
    services = _resolved_config(
        tmp_path, POSTGRES_USER="etl", TARGET_APP_USER="etl_app", API_TOKEN="tok"
    )["services"]
    target_env = _env(services["postgres_target"])
    assert target_env["TARGET_APP_USER"] == "etl_app"
    assert target_env["TARGET_APP_PASSWORD"] == SECRETS["TARGET_APP_PASSWORD"]
    for name in ("api", "worker"):
        url = make_url(_env(services[name])["TARGET_DATABASE_URL"])
        assert (url.username, url.password) == ("etl_app", SECRETS["TARGET_APP_PASSWORD"]), name
        assert (url.host, url.port, url.database) == ("postgres_target", 5432, "target_db")
    for name in APP_SERVICES:
        env = _env(services[name])
        assert SECRETS["POSTGRES_PASSWORD"] not in json.dumps(env), f"{name} holds the superuser's"
        for value in env.values():
            if value.startswith("postgresql"):
                assert make_url(value).username != "etl", f"{name} connects as the superuser"
    # Each role holds only what it uses.
    assert "SOURCE_DATABASE_URL" not in _env(services["worker"])  # it reads the source via the API
    for name in ("beat", "flower"):
        assert not [k for k in _env(services[name]) if k.endswith("_DATABASE_URL")], name
    assert [name for name in APP_SERVICES if "API_TOKEN" in _env(services[name])] == ["api"]


def test_every_documented_setting_reaches_the_services(tmp_path: Path) -> None:
    names = list(dict.fromkeys([*_readme_settings(), *EXTRA_SETTINGS]))
    values = {name: f"{name.lower()}-from-env" for name in names}
    services = _resolved_config(tmp_path, **values)["services"]
    missing, ignored = [], []
    for name in names:
        for role in sorted(CREDENTIAL_SETTINGS.get(name, set(SETTINGS_ROLES))):
            env = _env(services[role])
            if name not in env:
                missing.append(f"{name} -> {role}")
            elif name in FIXED_SETTINGS:
                assert "from-env" not in env[name], f"{role}: {name} follows .env"
            elif env[name] != values[name]:
                ignored.append(f"{name} -> {role}: {env[name]!r}")
    assert not missing, f"settings that do not reach a service: {missing}"
    assert not ignored, f"settings whose value in .env is ignored: {ignored}"


def test_compose_defaults_are_the_settings_defaults(tmp_path: Path) -> None:
    """A setting left out of `.env` means the same in a container as anywhere else."""
    from windfarm.config import Settings

    services = _resolved_config(tmp_path)["services"]
    compared = set()
    for role in SETTINGS_ROLES:
        for name, value in _env(services[role]).items():
            field = name.lower()
            if name in FIXED_SETTINGS or field not in Settings.model_fields:
                continue
            parsed = getattr(Settings(_env_file=None, **{field: value}), field)
            default = Settings.model_fields[field].default
            assert parsed == default, f"{role}: {name}={value!r} means {parsed!r}, not {default!r}"
            compared.add(name)
    assert {"ETL_MAX_RETRIES", "ETL_VARIABLES", "ETL_CATCHUP_DAYS", "FLOWER_URL"} <= compared


def test_every_service_has_a_memory_limit(tmp_path: Path) -> None:
    services = _resolved_config(tmp_path)["services"]
    for name, service in services.items():
        limit = _memory_limit(service)
        assert limit is not None, f"{name} has no memory limit"
        assert limit >= 128 * 1024**2, f"{name}: {limit} bytes is too little to start"


# --- compose structure ----------------------------------------------------------


def test_compose_services_and_images() -> None:
    services = _raw_compose()["services"]
    assert set(services) == SERVICES
    assert {name for name, service in services.items() if service.get("profiles")} == MONITORING
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert services["postgres_source"]["image"].startswith("postgres:15")
    assert services["postgres_target"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    assert _env(services["postgres_source"])["POSTGRES_DB"] == "source_db"
    assert _env(services["postgres_target"])["POSTGRES_DB"] == "target_db"


def test_compose_secrets_have_no_defaults() -> None:
    """Every use of a secret is ``${NAME:?message}``: no default, no blank value."""
    raw = COMPOSE_FILE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"(\W[^}]*)?\}", raw)
        assert uses, f"{name} is not used"
        for use in uses:
            assert use.startswith(":?"), f"${{{name}{use}}} must be ${{{name}:?message}}"
    assert not re.search(r"PASSWORD:-|BASIC_AUTH:-|change-me", raw), "a default secret"


def test_compose_healthchecks() -> None:
    services = _raw_compose()["services"]
    for name, service in services.items():
        assert _healthcheck(service), f"{name} has no healthcheck"
    assert "pg_isready" in _healthcheck(services["postgres_source"])
    assert "pg_isready" in _healthcheck(services["postgres_target"])
    assert "redis-cli ping" in _healthcheck(services["redis"])
    assert "http://localhost:8000/health" in _healthcheck(services["api"])
    assert "http://localhost:5555/healthcheck" in _healthcheck(services["flower"])
    # The worker pings its own node: the name it takes is the one the check asks for.
    worker = services["worker"]
    assert _option(_argv(worker), "--hostname") == "celery@%h"
    assert re.search(r"inspect ping .*celery@\$\$\{?HOSTNAME\b", _healthcheck(worker))
    # Beat's check reads the schedule file beat writes.
    schedule = _option(_argv(services["beat"]), "--schedule")
    assert schedule and schedule in _healthcheck(services["beat"])


def test_compose_depends_on_waits_for_health() -> None:
    services = _raw_compose()["services"]
    for name in APP_SERVICES:
        depends_on = services[name].get("depends_on")
        assert isinstance(depends_on, dict) and depends_on, f"{name}: depends_on needs conditions"
        for dependency, options in depends_on.items():
            assert options == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            # service_healthy on a service without a healthcheck never starts.
            assert _healthcheck(services[dependency]), f"{dependency} has no healthcheck"
    assert {"postgres_source", "postgres_target"} <= set(services["api"]["depends_on"])
    assert {"redis", "postgres_target", "api"} <= set(services["worker"]["depends_on"])
    # Beat only sends messages; Flower only watches the broker.
    assert set(services["beat"]["depends_on"]) == {"redis"}
    assert set(services["flower"]["depends_on"]) == {"redis"}


def test_compose_restart_policies_and_named_volumes() -> None:
    compose = _raw_compose()
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name
    named = set(compose.get("volumes") or {})
    for database in ("postgres_source", "postgres_target"):
        mounts = compose["services"][database]["volumes"]
        data = [m for m in mounts if m.split(":")[1] == "/var/lib/postgresql/data"]
        assert data and data[0].split(":")[0] in named, f"{database}: data is not a named volume"


def test_compose_seeds_the_source_with_the_seed_sql() -> None:
    ordered = _init_scripts(_raw_compose()["services"]["postgres_source"])
    assert ordered == ["api/sql/source.sql", "docker/source-readonly.sh"], ordered
    for host in ordered:
        assert (ROOT / host).is_file(), host

    from api.seed_source import source_sql

    # The container is seeded from exactly the file `python -m api.seed_source` applies.
    assert (ROOT / "api/sql/source.sql").read_text(encoding="utf-8") == source_sql()


def test_compose_target_creates_the_application_role() -> None:
    ordered = _init_scripts(_raw_compose()["services"]["postgres_target"])
    assert ordered == ["docker/target-app-role.sh"], ordered
    assert APP_ROLE_SCRIPT.is_file()


def test_compose_worker_scales_and_beat_does_not() -> None:
    services = _raw_compose()["services"]
    assert "container_name" not in services["worker"]
    assert not services["worker"].get("ports")
    assert "hostname" not in services["worker"]  # would give every replica one node name
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_compose_commands() -> None:
    from windfarm.queue import app

    services = _raw_compose()["services"]
    for name, expected in COMMANDS.items():
        assert _command(services[name]).startswith(expected), name
    worker_argv = _argv(services["worker"])
    # The app declares both lanes: -Q would only narrow them. Task events are the
    # app's to decide (on in its configuration, or turned on by Flower while it
    # watches): -E would force them on for good.
    assert not {"-Q", "--queues", "-E", "--task-events"} & set(worker_argv), worker_argv
    assert not [arg for arg in worker_argv if arg.startswith(("--queues=", "-Q"))], worker_argv
    assert {queue.name for queue in app.conf.task_queues} == {
        app.conf.task_default_queue,
        f"{app.conf.task_default_queue}.priority",
    }
    flower_argv = _argv(services["flower"])
    if not app.conf.worker_send_task_events:
        from flower.options import options

        assert options.enable_events, "Flower must turn the workers' task events on"
        assert not [arg for arg in flower_argv if "enable_events" in arg.replace("-", "_")]
    assert _option(flower_argv, "--port") == "5555"
    assert "--port 8000" in _command(services["api"])


def test_compose_app_services_share_one_image() -> None:
    services = _raw_compose()["services"]
    builds = {str(services[name].get("build")) for name in APP_SERVICES}
    images = {services[name].get("image") for name in APP_SERVICES}
    assert builds == {"."} and len(images) == 1


def test_compose_api_reads_the_source_as_the_readonly_role() -> None:
    services = _raw_compose()["services"]
    source_env = _env(services["postgres_source"])
    url = _env(services["api"])["SOURCE_DATABASE_URL"]
    credentials = re.search(r"://(\$\{[^}]*\}):(\$\{[^}]*\})@postgres_source:5432/source_db$", url)
    assert credentials, url
    reader, password = credentials.groups()
    assert reader == source_env["SOURCE_READONLY_USER"]
    assert password == source_env["SOURCE_READONLY_PASSWORD"]
    assert _default_of(reader) != _default_of(source_env["POSTGRES_USER"])
    for name in APP_SERVICES:
        source_url = _env(services[name]).get("SOURCE_DATABASE_URL", "")
        assert "POSTGRES_PASSWORD" not in source_url, f"{name} holds the source owner's password"


# --- the commands' modules ------------------------------------------------------


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_command_target_loads(service: str) -> None:
    """What each container runs imports here, the way its CLI will load it."""
    argv = _argv(_raw_compose()["services"][service])
    if argv[:3] == ["python", "-m", "api.serve"]:
        from fastapi import FastAPI
        from uvicorn.importer import import_from_string

        importlib.import_module("api.serve")
        assert isinstance(import_from_string("api.main:app"), FastAPI)
    else:
        from celery import Celery
        from celery.app.utils import find_app

        assert argv[:2] == ["celery", "-A"], argv
        importlib.import_module(argv[2])
        try:
            app = find_app(argv[2])
        except AttributeError:
            pytest.fail(f"`celery -A {argv[2]}` finds no Celery app in {argv[2]}")
        assert isinstance(app, Celery), f"`celery -A {argv[2]}` finds {app!r}, not a Celery app"


# --- the healthchecks, run against real processes ----------------------------------


def _start(name: str, argv: list[str], env: dict[str, str], log_dir: Path):
    """``argv`` (a container command starting with `celery`) as a process here."""
    from tests.support.procs import start

    assert argv[0] == "celery", argv
    return start(name, ["-m", "celery", *argv[1:]], env, log_dir)


def _run_check(command: str, env: dict[str, str], timeout: float = 60):
    return subprocess.run(
        ["sh", "-c", command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _until_healthy(check: str, env: dict[str, str], proc, what: str) -> None:
    """Run the healthcheck every 0.5 s until it passes (30 s at most, while ``proc`` lives)."""
    from tests.support.waiting import until

    until(
        lambda: _run_check(check, env).returncode == 0,
        timeout=30,
        interval=0.5,
        alive=proc.alive,
        what=what,
        procs=(proc,),
    )


def test_worker_healthcheck_pings_its_own_node(tmp_path: Path) -> None:
    from tests.support.procs import purge_queue

    worker = _resolved_config(tmp_path)["services"]["worker"]
    argv = [re.sub(r"^--concurrency=.*", "--concurrency=1", arg) for arg in _argv(worker)]
    queue = f"compose-hc-{uuid.uuid4().hex[:8]}"
    # In a container $HOSTNAME is the host name %h expands to; here it is set to it.
    env = _probe_env(
        tmp_path,
        CELERY_BROKER_URL=PROBE_BROKER_URL,
        ETL_QUEUE=queue,
        TARGET_DATABASE_URL="postgresql+psycopg2://nobody@127.0.0.1:1/none",
        HOSTNAME=socket.gethostname(),
    )
    check = _healthcheck_shell(worker)
    proc = _start("worker", argv, env, tmp_path)
    try:
        assert proc.wait_for_log(" ready.", 60), proc.describe()
        result = _run_check(check, env)
        assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{proc.describe()}"
        assert "pong" in result.stdout
        # Another node's name gets no answer: the check is about this container.
        other = _run_check(
            re.sub(r"--timeout[= ]\d+", "--timeout 2", check),
            {**env, "HOSTNAME": f"elsewhere-{uuid.uuid4().hex[:6]}"},
        )
        assert other.returncode != 0, other.stdout
    finally:
        proc.stop()
        purge_queue(PROBE_BROKER_URL, queue)


def test_beat_healthcheck_follows_the_schedule_file(tmp_path: Path) -> None:
    from tests.support.procs import purge_queue

    beat = _resolved_config(tmp_path)["services"]["beat"]
    argv = _argv(beat)
    container_schedule = _option(argv, "--schedule")
    schedule = str(tmp_path / "celerybeat-schedule")
    argv = [arg.replace(container_schedule, schedule) for arg in argv]
    check = _healthcheck_shell(beat).replace(container_schedule, schedule)
    queue = f"compose-hc-{uuid.uuid4().hex[:8]}"
    env = _probe_env(
        tmp_path, CELERY_BROKER_URL=PROBE_BROKER_URL, ETL_QUEUE=queue, ETL_RECONCILE_EVERY_S="60"
    )

    assert _run_check(check, env).returncode != 0, "healthy before beat started"
    proc = _start("beat", argv, env, tmp_path)
    try:
        _until_healthy(check, env, proc, "beat looking healthy")
    finally:
        proc.stop()
        purge_queue(PROBE_BROKER_URL, queue)
    # A schedule file that has not been written for long: the loop has stopped.
    files = list(tmp_path.glob("celerybeat-schedule*"))
    stale = time.time() - 1000
    for path in files:
        os.utime(path, (stale, stale))
    assert _run_check(check, env).returncode != 0, "healthy with a stale schedule file"
    # ...unless the reconciler is that slow on purpose.
    assert _run_check(check, {**env, "ETL_RECONCILE_EVERY_S": "600"}).returncode == 0


def test_flower_healthcheck_is_open_and_the_rest_is_not(tmp_path: Path) -> None:
    from tests.support.procs import free_port

    flower = _resolved_config(tmp_path)["services"]["flower"]
    port = str(free_port())
    argv = [re.sub(r"^--port=\d+$", f"--port={port}", arg) for arg in _argv(flower)]
    check = _healthcheck_shell(flower).replace(":5555/", f":{port}/")
    # Exactly the container's environment, with this machine's broker.
    env = _probe_env(tmp_path, **{**_env(flower), "CELERY_BROKER_URL": PROBE_BROKER_URL})
    proc = _start("flower", argv, env, tmp_path)
    try:
        _until_healthy(check, env, proc, "Flower's healthcheck passing")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert refused.value.code == 401
        login = base64.b64encode(SECRETS["FLOWER_BASIC_AUTH"].encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", headers={"Authorization": f"Basic {login}"}
        )
        with urllib.request.urlopen(request, timeout=10) as page:
            assert page.status == 200
    finally:
        proc.stop()


# --- Dockerfile and .dockerignore -----------------------------------------------


def test_dockerfile_base_user_and_default_command() -> None:
    instructions = _dockerfile_instructions()
    text_ = DOCKERFILE.read_text()
    assert "python:3.11-slim" in text_
    users = [args for name, args in instructions if name == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    cmd = [args for name, args in instructions if name == "CMD"][-1]
    assert " ".join(yaml.safe_load(cmd)) == "python -m api.serve --host 0.0.0.0 --port 8000"
    env = " ".join(args for name, args in instructions if name == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    # No secrets baked in: nothing credential-like set at build time.
    for name, args in instructions:
        if name in {"ENV", "ARG"}:
            assert not re.search(r"PASSWORD|TOKEN|SECRET|_URL", args, re.I), args


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    instructions = _dockerfile_instructions()
    copies = [
        (i, _copy_sources(args)) for i, (name, args) in enumerate(instructions) if name == "COPY"
    ]
    manifest = next(i for i, sources in copies if "requirements.lock" in sources)
    code = [
        i for i, sources in copies if {"api", "workers", "scheduler", "windfarm"} & set(sources)
    ]
    assert code and manifest < min(code), "the lock file must be copied before the code"
    dependency_install = [
        i
        for i, (name, args) in enumerate(instructions)
        if name == "RUN" and "pip install" in args and manifest < i < min(code)
    ]
    assert dependency_install, "dependencies must be installed in a layer before the code"
    # Only the lock file and the manifest may come before that layer, or every
    # edit would rebuild it; the layer installs the lock file, hashes checked.
    assert [s for i, s in copies if i < dependency_install[0]] == [
        ["requirements.lock", "pyproject.toml"]
    ]
    layer = instructions[dependency_install[0]][1]
    assert "--require-hashes -r requirements.lock" in layer
    package_install = [
        args
        for i, (name, args) in enumerate(instructions)
        if name == "RUN" and i > max(code) and "pip install" in args
    ]
    assert package_install and "--no-deps" in package_install[0]
    copied = {source for _, sources in copies for source in sources}
    assert {"api", "workers", "scheduler", "windfarm"} <= copied


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    patterns = [
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name, args in _dockerfile_instructions():
        if name != "COPY" or "--from" in args:
            continue
        for source in _copy_sources(args):
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch(source, pattern) for pattern in patterns), (
                f"COPY {source}: excluded by .dockerignore"
            )


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".env", ".run", "scripts"} <= patterns


# --- the database roles the init scripts create, on the real PostgreSQL ----------------


def test_readonly_role_script_grants_select_only(fresh_dbs) -> None:
    """docker/source-readonly.sh, run as the postgres image runs it, on a seeded source."""
    assert shutil.which("psql"), "psql (the PostgreSQL client) is needed to run the init script"
    source = make_url(fresh_dbs.source_url)
    reader, password = f"wf_reader_{uuid.uuid4().hex[:8]}", "it's secret"
    env = {
        **os.environ,
        "POSTGRES_USER": source.username or "postgres",
        "POSTGRES_DB": source.database,
        "SOURCE_READONLY_USER": reader,
        "SOURCE_READONLY_PASSWORD": password,
        "PGHOST": source.host or "127.0.0.1",
        "PGPORT": str(source.port or 5432),
        "PGPASSWORD": source.password or "",
    }
    owner = create_engine(source)
    reader_engine = create_engine(source.set(username=reader, password=password))
    try:
        for _ in range(2):  # the second run proves it can be applied again
            result = subprocess.run(
                ["bash", str(READONLY_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, result.stderr

        with reader_engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM data")) == 14_400
        forbidden = [
            "INSERT INTO data (\"timestamp\") VALUES ('2030-01-01')",
            "SET TRANSACTION READ WRITE; UPDATE data SET power = 0",
            "SET TRANSACTION READ WRITE; CREATE TABLE scratch (x int)",
            "SET TRANSACTION READ WRITE; CREATE TEMP TABLE scratch (x int)",
        ]
        for statement in forbidden:
            with (
                reader_engine.connect() as conn,
                pytest.raises(DBAPIError, match="read-only transaction|permission denied"),
            ):
                conn.execute(text(statement))
    finally:
        reader_engine.dispose()
        with owner.begin() as conn:
            if conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": reader}):
                conn.execute(text(f'DROP OWNED BY "{reader}"'))
                conn.execute(text(f'DROP ROLE "{reader}"'))
        owner.dispose()


def test_target_app_role_script_grants_what_the_app_needs_and_nothing_more(
    tmp_path: Path,
) -> None:
    """docker/target-app-role.sh, run as the postgres image runs it, on a database
    of this test's own that already holds a table (a volume from before the role)."""
    assert shutil.which("psql"), "psql (the PostgreSQL client) is needed to run the init script"
    from windfarm.models import prepare_target

    server = make_url(PG_URL)
    tag = uuid.uuid4().hex[:8]
    target_db, other_db = f"wf_compose_{tag}_target", f"wf_compose_{tag}_other"
    app_user, password = f"wf_app_{tag}", "it's s3cret"
    env = {
        **os.environ,
        "POSTGRES_USER": server.username or "postgres",
        "POSTGRES_DB": target_db,
        "TARGET_APP_USER": app_user,
        "TARGET_APP_PASSWORD": password,
        "PGHOST": server.host or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "PGPASSWORD": server.password or "",
    }
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    app_url = server.set(database=target_db, username=app_user, password=password)
    app_engine = create_engine(app_url)
    probe_engine = create_engine(app_url, isolation_level="AUTOCOMMIT")
    other_engine = create_engine(app_url.set(database=other_db), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{target_db}"'))
            conn.execute(text(f'CREATE DATABASE "{other_db}"'))
        for database, table in ((target_db, "legacy"), (other_db, "private")):
            owner = create_engine(server.set(database=database))
            with owner.begin() as conn:
                conn.execute(text(f"CREATE TABLE {table} (id serial PRIMARY KEY, v int)"))
                conn.execute(text(f"INSERT INTO {table} (v) VALUES (1)"))
            owner.dispose()

        for _ in range(2):  # the second run proves it can be applied again
            result = subprocess.run(
                ["bash", str(APP_ROLE_SCRIPT)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr

        # What the application does at start, as the role: check that the
        # database exists (from `postgres`), take the schema lock, create_all.
        prepare_target(app_engine)
        with app_engine.begin() as conn:
            owners = dict(
                conn.execute(
                    text("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
                ).all()
            )
            assert {"signal", "data", "etl_job", "etl_slice", "legacy"} <= set(owners), owners
            assert set(owners.values()) == {app_user}, owners
            assert conn.scalar(text("SELECT pg_try_advisory_lock(42)")) is True
            assert conn.scalar(text("SELECT pg_advisory_unlock(42)")) is True
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('windfarm-etl submit'))"))
            conn.execute(text("CREATE TABLE scratch (x int)"))
            conn.execute(text("INSERT INTO legacy (v) VALUES (2)"))
            conn.execute(text("ALTER TABLE legacy ADD COLUMN w int"))
            role = conn.execute(
                text(
                    "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                    "FROM pg_roles WHERE rolname = current_user"
                )
            ).one()
            assert not any(role), role
            # Only the application role (and superusers) may connect to the target.
            assert (
                conn.scalar(
                    text("SELECT has_database_privilege('public', current_database(), 'CONNECT')")
                )
                is False
            )
        forbidden = [
            (probe_engine, f'CREATE ROLE "wf_other_{tag}"'),
            (probe_engine, f'CREATE DATABASE "wf_compose_{tag}_more"'),
            (probe_engine, "CREATE SCHEMA elsewhere"),
            (probe_engine, f'ALTER ROLE "{app_user}" SUPERUSER'),
            (other_engine, "SELECT * FROM private"),
            (other_engine, "CREATE TABLE private2 (x int)"),
        ]
        for engine, statement in forbidden:
            with engine.connect() as conn, pytest.raises(DBAPIError) as refused:
                conn.execute(text(statement))
            # 42501: insufficient_privilege ("permission denied", "must be superuser").
            assert getattr(refused.value.orig, "pgcode", None) == "42501", (statement, refused)
    finally:
        for engine in (app_engine, probe_engine, other_engine):
            engine.dispose()
        with admin.connect() as conn:
            for database in (target_db, other_db, f"wf_compose_{tag}_more"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{app_user}"'))
        admin.dispose()


# --- scripts/new-env.sh and the docs -----------------------------------------------


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    return values


def _new_env(checkout: Path) -> subprocess.CompletedProcess:
    """scripts/new-env.sh run in a copy of the repository's layout at ``checkout``."""
    (checkout / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(NEW_ENV_SCRIPT, checkout / "scripts" / "new-env.sh")
    shutil.copy(COMPOSE_FILE, checkout / "docker-compose.yml")
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "new-env.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=checkout,
        env=_clean_env(checkout),
    )


def test_new_env_writes_every_secret_once(tmp_path: Path) -> None:
    from windfarm.config import Settings

    checkout = tmp_path / "checkout"
    result = _new_env(checkout)
    assert result.returncode == 0, result.stderr
    env_file = checkout / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) & 0o077 == 0, "others may read the secrets"
    values = _read_env_file(env_file)
    assert set(SECRETS) <= set(values), values.keys()
    passwords = [values[name] for name in SECRETS if name != "FLOWER_BASIC_AUTH"]
    user, _, flower_password = values["FLOWER_BASIC_AUTH"].partition(":")
    passwords.append(flower_password)
    for value in [*passwords, user]:
        assert re.fullmatch(r"[A-Za-z0-9]+", value), f"{value!r}: letters and digits only"
    assert all(len(value) >= 24 for value in passwords), passwords
    assert len(set(passwords)) == len(passwords), "every secret is a new one"
    # It says what it wrote and how to log into Flower.
    for name in SECRETS:
        assert name in result.stdout
    assert user in result.stdout and flower_password in result.stdout
    assert "5555" in result.stdout
    # The app's own settings read a `.env` in the directory they run in: this one
    # parses, and turns on no API token for `make run` or `make test` there.
    assert "API_TOKEN" not in values
    assert Settings(_env_file=env_file).api_token is None

    # Never overwritten.
    before = env_file.read_bytes()
    again = subprocess.run(
        ["bash", str(checkout / "scripts" / "new-env.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=checkout,
        env=_clean_env(checkout),
    )
    assert again.returncode != 0 and "exists" in again.stderr, again
    assert env_file.read_bytes() == before

    # Compose takes the `.env` beside it as it is.
    command = [*_compose_cli(), "-f", str(checkout / "docker-compose.yml"), "config"]
    services = _parse_config(
        subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=checkout,
            env=_clean_env(checkout),
        )
    )["services"]
    assert _env(services["flower"])["FLOWER_BASIC_AUTH"] == values["FLOWER_BASIC_AUTH"]
    assert _env(services["worker"])["CELERY_BROKER_URL"] == (
        f"redis://:{values['REDIS_PASSWORD']}@redis:6379/0"
    )
    assert _env(services["postgres_target"])["POSTGRES_PASSWORD"] == values["POSTGRES_PASSWORD"]
    assert (
        make_url(_env(services["api"])["TARGET_DATABASE_URL"]).password
        == (values["TARGET_APP_PASSWORD"])
    )

    # Another run elsewhere makes other secrets.
    other = _new_env(tmp_path / "other")
    assert other.returncode == 0, other.stderr
    assert not set(_read_env_file(tmp_path / "other" / ".env").values()) & set(passwords)


def test_docs_and_examples_ship_no_default_password() -> None:
    for path in (CONTAINERS_DOC, ENV_EXAMPLE, COMPOSE_FILE, NEW_ENV_SCRIPT):
        content = path.read_text(encoding="utf-8")
        for default in ("postgres:postgres", "change-me", ":reader@", "admin:admin"):
            assert default not in content, f"{path.name} ships {default!r}"
    doc = CONTAINERS_DOC.read_text(encoding="utf-8")
    for term in (
        "scripts/new-env.sh",
        "API_BIND",
        "FLOWER_BIND",
        "TARGET_APP_USER",
        "REDIS_PASSWORD",
        "maxmemory",
        "mem_limit",
    ):
        assert term in doc, f"docs/containers.md does not mention {term}"
