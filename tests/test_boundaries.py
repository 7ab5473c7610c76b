"""Each process imports only its own side: the API and beat publish by task
name and never load task code or numpy (docs/architecture.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.procs import REPO, process_env

WORKER_SIDE = (
    "numpy",
    "workers.run",
    "workers.tasks",
    "workers.stats",
    "workers.store",
    "workers.source",
    "scheduler.tasks",
)


def _loaded_after(statement: str) -> set[str]:
    probe = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps([m for m in {list(WORKER_SIDE)!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "statement",
    [
        "import api.main",
        "import scheduler",  # celery -A scheduler beat
        "import windfarm.dispatch",
    ],
)
def test_producers_load_no_task_code(statement):
    assert _loaded_after(statement) == set()


def test_the_cli_runs_slices_without_the_task_modules():
    loaded = _loaded_after("import workers.etl")
    assert "workers.tasks" not in loaded and "scheduler.tasks" not in loaded


def test_the_worker_loads_both_kinds_of_task_on_the_one_app():
    probe = (
        "from workers import app\nfrom windfarm.queue import app as one\n"
        "assert app is one\n"
        "print(sorted(n for n in app.tasks if not n.startswith('celery.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(
        [
            "scheduler.enqueue_daily",
            "scheduler.enqueue_hourly",
            "scheduler.reconcile",
            "workers.process_slice",
        ]
    )
