"""``make reset`` (scripts/reset.py) drops the databases the settings name."""

from __future__ import annotations

import subprocess
import sys
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.databases import PG_URL
from tests.support.procs import REPO, process_env
from windfarm.db import ensure_database


def _exists(name: str) -> bool:
    engine = create_engine(f"{PG_URL}/postgres", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return bool(
                conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            )
    finally:
        engine.dispose()


def _reset(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/reset.py", *args],
        cwd=REPO,
        env=process_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_reset_drops_the_configured_databases_once_confirmed(tmp_path):
    names = [f"wf_reset_{uuid.uuid4().hex[:8]}_{role}" for role in ("source", "target")]
    for name in names:
        ensure_database(f"{PG_URL}/{name}")
    run_dir = tmp_path / "run"
    (run_dir / "pg-5432").mkdir(parents=True)
    env = {
        "SOURCE_DATABASE_URL": f"{PG_URL}/{names[0]}",
        "TARGET_DATABASE_URL": f"{PG_URL}/{names[1]}",
        "RUN_DIR": str(run_dir),
    }
    refused = _reset(**env)  # no terminal to ask: nothing happens
    assert refused.returncode == 1 and "--yes" in refused.stdout
    assert all(_exists(name) for name in names)
    done = _reset("--yes", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any(_exists(name) for name in names)
    assert not run_dir.exists()
    assert done.stdout.count("dropped") == 2
