"""The container setup (docker-compose.yml, Dockerfile, .dockerignore), checked
without a Docker engine.

``docker-compose config`` validates and resolves the compose file the way
``docker compose up`` would; the other tests read the files and check what a
container run relies on: services, ports, healthchecks, the source seed, the
scalable worker, the commands (and that the modules they name import here), a
non-root image with a cached dependency layer, and the read-only source role.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
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

APP_SERVICES = ("api", "worker", "beat", "flower")
SERVICES = {"postgres_source", "postgres_target", "redis", *APP_SERVICES}
HOST_PORTS = {"postgres_source": 5433, "postgres_target": 5434, "api": 8000, "flower": 5555}
COMMANDS = {
    "api": "uvicorn api.main:app",
    "worker": "celery -A workers worker",
    "beat": "celery -A scheduler beat",
    "flower": "celery -A workers flower",
}
INSTALL_HINT = "apt-get install -y docker-compose"


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


def _resolved_config(tmp_path: Path, **variables: str) -> dict:
    """``docker-compose config`` output, with exactly ``variables`` set.

    The environment is cleared and an explicit env file replaces any `.env`, so
    neither the developer's shell nor their `.env` changes what is checked.
    """
    env_file = tmp_path / f"compose-{uuid.uuid4().hex[:8]}.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
    command = [*_compose_cli(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"]
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=clean_env
    )
    assert result.returncode == 0, (
        f"`{shlex.join(command)}` rejected the compose file:\n{result.stderr}"
    )
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict) and "services" in config, result.stdout
    return config


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


def _command(service: dict) -> str:
    command = service.get("command", "")
    return shlex.join(str(part) for part in command) if isinstance(command, list) else command


def _host_ports(service: dict) -> set[int]:
    """Published host ports, from the short ("[ip:]host:container") or long syntax."""
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published") is not None:
                ports.add(int(port["published"]))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) >= 2:
            ports.add(int(parts[-2]))
    return ports


def _healthcheck(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


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


# --- docker-compose config ----------------------------------------------------


def test_compose_config_resolves_with_no_env(tmp_path: Path) -> None:
    config = _resolved_config(tmp_path)
    services = config["services"]
    assert set(services) == SERVICES

    api_env = _env(services["api"])
    assert api_env["SOURCE_DATABASE_URL"] == (
        "postgresql+psycopg2://windfarm_reader:reader@postgres_source:5432/source_db"
    )
    assert api_env["TARGET_DATABASE_URL"] == (
        "postgresql+psycopg2://postgres:postgres@postgres_target:5432/target_db"
    )
    assert api_env["API_BASE_URL"] == "http://api:8000"
    assert api_env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert api_env["API_TOKEN"] == ""
    assert api_env["ETL_HOURLY_CRON"] == "5 * * * *"
    assert api_env["ETL_DAILY_CRON"] == "0 2 * * *"
    assert _env(services["flower"])["FLOWER_BASIC_AUTH"] == "admin:change-me"
    for name in APP_SERVICES:
        assert _env(services[name])["CELERY_BROKER_URL"] == "redis://redis:6379/0", name


def test_compose_env_file_overrides_credentials(tmp_path: Path) -> None:
    config = _resolved_config(
        tmp_path,
        POSTGRES_USER="etl",
        POSTGRES_PASSWORD="s3cret",
        SOURCE_READONLY_USER="viewer",
        SOURCE_READONLY_PASSWORD="r3ad",
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
    worker_env = _env(services["worker"])
    assert worker_env["TARGET_DATABASE_URL"].startswith("postgresql+psycopg2://etl:s3cret@")
    assert worker_env["API_TOKEN"] == "tok"
    assert worker_env["ETL_HOURLY_CRON"] == "15 * * * *"
    assert _env(services["api"])["SOURCE_DATABASE_URL"].startswith(
        "postgresql+psycopg2://viewer:r3ad@postgres_source:5432/"
    )
    assert _env(services["flower"])["FLOWER_BASIC_AUTH"] == "ops:hunter2"


def test_flower_auth_cannot_be_blanked(tmp_path: Path) -> None:
    config = _resolved_config(tmp_path, FLOWER_BASIC_AUTH="")
    assert _env(config["services"]["flower"])["FLOWER_BASIC_AUTH"] == "admin:change-me"


# --- compose structure ----------------------------------------------------------


def test_compose_services_and_host_ports() -> None:
    services = _raw_compose()["services"]
    assert set(services) == SERVICES
    for name, port in HOST_PORTS.items():
        assert _host_ports(services[name]) == {port}, name
    assert services["postgres_source"]["image"].startswith("postgres:15")
    assert services["postgres_target"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    assert _env(services["postgres_source"])["POSTGRES_DB"] == "source_db"
    assert _env(services["postgres_target"])["POSTGRES_DB"] == "target_db"


def test_compose_healthchecks() -> None:
    services = _raw_compose()["services"]
    assert "pg_isready" in _healthcheck(services["postgres_source"])
    assert "pg_isready" in _healthcheck(services["postgres_target"])
    assert "redis-cli ping" in _healthcheck(services["redis"])
    assert "http://localhost:8000/health" in _healthcheck(services["api"])


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
    assert {"redis", "postgres_target"} <= set(services["beat"]["depends_on"])
    assert "redis" in services["flower"]["depends_on"]


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
    mounts = _raw_compose()["services"]["postgres_source"]["volumes"]
    init = {}
    for mount in mounts:
        host, container, *mode = mount.split(":")
        if container.startswith("/docker-entrypoint-initdb.d/"):
            assert mode == ["ro"], f"{mount} should be read-only"
            init[Path(container).name] = host.removeprefix("./")
    ordered = [init[name] for name in sorted(init)]
    assert ordered == ["api/sql/source.sql", "docker/source-readonly.sh"], init
    for host in ordered:
        assert (ROOT / host).is_file(), host

    from api.seed_source import source_sql

    # The container is seeded from exactly the file `python -m api.seed_source` applies.
    assert (ROOT / "api/sql/source.sql").read_text(encoding="utf-8") == source_sql()


def test_compose_worker_scales_and_beat_does_not() -> None:
    services = _raw_compose()["services"]
    assert "container_name" not in services["worker"]
    assert not services["worker"].get("ports")
    assert "hostname" not in services["worker"]  # would give every replica one node name
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_compose_commands() -> None:
    services = _raw_compose()["services"]
    for name, expected in COMMANDS.items():
        assert _command(services[name]).startswith(expected), name
    assert "-E" in shlex.split(_command(services["worker"])), "workers must send task events"
    assert "--port=5555" in _command(services["flower"])
    assert "--port 8000" in _command(services["api"])


def test_compose_app_services_share_one_image() -> None:
    services = _raw_compose()["services"]
    builds = {str(services[name].get("build")) for name in APP_SERVICES}
    images = {services[name].get("image") for name in APP_SERVICES}
    assert builds == {"."} and len(images) == 1


def test_compose_credentials_come_from_variables() -> None:
    services = _raw_compose()["services"]
    for database in ("postgres_source", "postgres_target"):
        env = _env(services[database])
        for name in ("POSTGRES_USER", "POSTGRES_PASSWORD"):
            assert env[name].startswith("${" + name + ":-"), f"{database}: {name}"
    flower_auth = _env(services["flower"])["FLOWER_BASIC_AUTH"]
    assert ":" in _default_of(flower_auth), "Flower needs a user:password default"
    assert _env(services["api"])["API_TOKEN"] == "${API_TOKEN:-}"


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
    argv = shlex.split(_command(_raw_compose()["services"][service]))
    if argv[0] == "uvicorn":
        from fastapi import FastAPI
        from uvicorn.importer import import_from_string

        module_name, _, attribute = argv[1].partition(":")
        importlib.import_module(module_name)
        assert isinstance(import_from_string(f"{module_name}:{attribute}"), FastAPI)
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


# --- Dockerfile and .dockerignore -----------------------------------------------


def test_dockerfile_base_user_and_default_command() -> None:
    instructions = _dockerfile_instructions()
    text_ = DOCKERFILE.read_text()
    assert "python:3.11-slim" in text_
    users = [args for name, args in instructions if name == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    cmd = [args for name, args in instructions if name == "CMD"][-1]
    assert " ".join(yaml.safe_load(cmd)) == "uvicorn api.main:app --host 0.0.0.0 --port 8000"
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
    manifest = next(i for i, sources in copies if "pyproject.toml" in sources)
    code = [
        i for i, sources in copies if {"api", "workers", "scheduler", "windfarm"} & set(sources)
    ]
    assert code and manifest < min(code), "pyproject.toml must be copied before the code"
    dependency_install = [
        i
        for i, (name, args) in enumerate(instructions)
        if name == "RUN" and "pip install" in args and manifest < i < min(code)
    ]
    assert dependency_install, "dependencies must be installed in a layer before the code"
    # Only the manifest may come before that layer, or every edit would rebuild it.
    assert [s for i, s in copies if i < dependency_install[0]] == [["pyproject.toml"]]
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
    assert {".venv", ".git", ".env"} <= patterns


# --- the read-only source role, on the real PostgreSQL ------------------------------


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
