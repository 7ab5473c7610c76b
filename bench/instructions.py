"""Instructions per slice, counted by valgrind's callgrind: figures that repeat.

On a shared or virtual machine the CPU time of a slice can change by a factor
of two from one minute to the next, so a change of a few percent is lost in
``make bench``'s noise. The number of instructions a process executes does
not depend on how fast the machine runs at the time: two runs of the same
code give the same count to within a fraction of a percent.

Two figures, on a source (4 days) and a target of their own (``bench.run.Stack``):

- ``run_slice``: the worker's whole job for one slice (claim, fetch over
  HTTP, parse, compute, write), in one process: the count of a run of 56
  slices less that of a run of 8, over 48 (so start-up and imports cancel),
  with Python's automatic garbage collection off;
- ``api``: the API process for one ``GET /data`` of an hour: counters zeroed
  after 60 warm-up requests, then 200 requests counted.

Celery's own part (the consumer, the pool's IPC) is not counted here.

    python -m bench.instructions          # needs valgrind (Debian: valgrind)
"""

from __future__ import annotations

import argparse
import gc
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from bench import procs
from bench.run import FIRST_DAY, Stack

SLICE_RUNS = (8, 56)
WARM_UP_SLICES = 4
API_WARM_UP, API_COUNTED = 60, 200


def callgrind(out: Path, args: list[str]) -> list[str]:
    """``args`` run by this Python under callgrind, its counts written to ``out``."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, *args]


def instructions(dump: Path) -> int:
    """The instructions a callgrind dump counted (its ``summary`` or ``totals`` line)."""
    found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M)
    if found is None:
        raise ValueError(f"{dump} is not a callgrind dump")
    return int(found.group(1))


def run_slices(count: int) -> None:
    """In this process: a job of ``count`` slices (and the warm-up ones), each run."""
    from windfarm import jobs
    from windfarm.db import target_engine
    from workers.run import run_slice

    # No automatic garbage collection: when a full collection comes depends on
    # how reads happened to be split, and each costs tens of millions of
    # instructions, more than the difference being measured.
    gc.collect()
    gc.freeze()
    gc.disable()
    first = datetime.combine(FIRST_DAY, datetime.min.time())
    hours = [first + timedelta(hours=i) for i in range(WARM_UP_SLICES + count)]
    with target_engine().begin() as conn:
        job_id = jobs.store_job(conn, origin="cli", hours=hours, allow_empty=False)
    for hour in hours:
        outcome = run_slice(job_id, hour)
        if outcome.state != "succeeded":
            raise SystemExit(f"slice {hour} ended {outcome.state}: {outcome.error}")


def _hour_requests(url: str, count: int) -> None:
    from workers.source import ApiClient

    client = ApiClient(60)
    try:
        for i in range(count):
            start = datetime.combine(FIRST_DAY, datetime.min.time()) + timedelta(hours=i % 72)
            end = start + timedelta(hours=1, microseconds=-1)
            answer = client.get(
                f"{url}/data?start={start.isoformat()}&end={end.isoformat()}"
                "&variables=wind_speed&variables=power",
                headers={},
            )
            if answer.status_code != 200:
                raise RuntimeError(f"GET /data answered {answer.status_code}")
    finally:
        client.close()


def per_slice(stack: Stack) -> float:
    """Instructions of ``run_slice`` a slice, against an API run as usual."""
    api = stack.start_api(1)
    counts = {}
    for count in SLICE_RUNS:
        stack.reset_target()
        dump = stack.log_dir / f"slices-{count}.callgrind"
        subprocess.run(
            callgrind(dump, ["-m", "bench.instructions", "--run-slices", str(count)]),
            env=stack.env,
            check=True,
            capture_output=True,
        )
        counts[count] = instructions(dump)
    api.stop()
    stack.procs.remove(api)
    few, many = SLICE_RUNS
    return (counts[many] - counts[few]) / (many - few)


def per_request(stack: Stack) -> float:
    """Instructions of the API process a ``GET /data`` of an hour."""
    port = procs.free_port()
    dump = stack.log_dir / "api.callgrind"
    args = ["-m", "api.serve", "--host", "127.0.0.1", "--port", str(port)]
    log_path = stack.log_dir / "api-callgrind.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            callgrind(dump, args),
            env=stack.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.procs.append(procs.Proc("api-callgrind", popen, log_path))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # uvicorn's start is slow under valgrind
    while not _healthy(url):
        if time.monotonic() > deadline or popen.poll() is not None:
            raise RuntimeError("the API did not start under valgrind")
        time.sleep(0.5)
    _hour_requests(url, API_WARM_UP)
    subprocess.run(["callgrind_control", "--zero", str(popen.pid)], check=True, capture_output=True)
    _hour_requests(url, API_COUNTED)
    subprocess.run(["callgrind_control", "--dump", str(popen.pid)], check=True, capture_output=True)
    # A dump on request is written beside the final one, numbered.
    dumps = sorted(stack.log_dir.glob("api.callgrind.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise RuntimeError("callgrind wrote no dump of the API")
    return instructions(dumps[-1]) / API_COUNTED


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--run-slices", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_slices is not None:
        run_slices(args.run_slices)
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_control") if not shutil.which(tool)]
    if missing:
        print(f"needs {' and '.join(missing)} (Debian's package valgrind)", file=sys.stderr)
        return 2
    stack = Stack(days=4)  # its own source and target, dropped at the end
    # The same hashes in every run, so the same dict layouts and work.
    stack.env["PYTHONHASHSEED"] = "0"
    try:
        stack.seed()
        slice_instructions = per_slice(stack)
        request_instructions = per_request(stack)
    finally:
        stack.close()
    print(f"run_slice, one process      {slice_instructions / 1e6:7.3f} M instructions a slice")
    print(f"API, GET /data of an hour   {request_instructions / 1e6:7.3f} M instructions a request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
