"""``make reset``: start the local setup afresh.

Drops the source and target databases the settings name (SOURCE_DATABASE_URL,
TARGET_DATABASE_URL: by default source_db and target_db on localhost) and the
private PostgreSQL/Redis data ``make run`` keeps under ``.run/``. The next
``make run`` creates and seeds everything again. Asks first, unless ``--yes``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from windfarm.config import get_settings
from windfarm.db import drop_database

# Where make run keeps its private PostgreSQL and Redis (scripts/devrun.py).
RUN_DIR = Path(os.environ.get("RUN_DIR", ".run"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make reset", description=__doc__.split("\n")[0])
    parser.add_argument("--yes", action="store_true", help="do not ask")
    args = parser.parse_args(argv)
    settings = get_settings()
    urls = [settings.source_database_url, settings.target_database_url]
    shown = [make_url(url).render_as_string(hide_password=True) for url in urls]
    print(
        "reset: this drops "
        + " and ".join(shown)
        + (f" and removes {RUN_DIR}/" if RUN_DIR.exists() else "")
    )
    if not args.yes:
        if not sys.stdin.isatty():
            print("reset: not a terminal; run `python scripts/reset.py --yes` to go ahead")
            return 1
        if input("type yes to go on: ").strip() != "yes":
            print("reset: nothing done")
            return 1
    for url, name in zip(urls, shown, strict=True):
        try:
            drop_database(url)
            print(f"reset: dropped {name}")
        except OperationalError:
            print(f"reset: {name} does not answer; not dropped")
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
        print(f"reset: removed {RUN_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
