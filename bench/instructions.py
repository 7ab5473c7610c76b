"""Instructions per slice, counted by valgrind's callgrind: figures that repeat.

On a shared or virtual machine the CPU time of a slice can change by a factor
of two from one minute to the next, so a change of a few percent is lost in
``make bench``'s noise. The number of instructions a process executes does
not depend on how fast the machine runs at the time: two runs of the same
code give the same count to within a fraction of a percent.

Three figures, on a source (14 days) and a target of their own (``bench.run.Stack``):

- ``run_slice``: the worker's whole job for one slice (claim, fetch over
  HTTP, parse, compute, write), in one process: the count of a run of 56
  slices less that of a run of 8, over 48 (so start-up and imports cancel),
  with Python's automatic garbage collection off;
- ``api``: the API process for one ``GET /data`` of an hour: counters zeroed
  after 60 warm-up requests, then 200 requests counted;
- ``node``: a Celery worker node of one pool process, as ``make bench`` runs
  it, for one slice of a posted job: its consumer (the main process, which
  receives, dispatches and acknowledges every message) and its pool process
  (Celery's trace and IPC around ``run_slice``), automatic garbage collection
  off. Two lives of the node, each a warm-up day and then a job of one day
  or of thirteen: the difference over 288 slices. The consumer is counted from
  before the job is posted until it has ended. The pool process is counted
  over its whole life, since valgrind dumps a forked child only when it exits,
  and that count includes its parent's start before the fork (some 4,000 M
  instructions, which vary by a few tens of millions from one life to the
  next: hence the long difference).

    python -m bench.instructions          # needs valgrind (Debian: valgrind)
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx

from bench import procs
from bench.run import FIRST_DAY, Stack
from windfarm.models import ENDED_JOB

SLICE_RUNS = (8, 56)
WARM_UP_SLICES = 4
API_WARM_UP, API_COUNTED = 60, 200
NODE_RUNS = (1, 13)  # days counted after the warm-up day, in each life of the node
STARTS_UNDER_VALGRIND_S = 300
_CELERY_WITHOUT_GC = (
    "import gc, sys; gc.disable(); sys.argv[0] = 'celery'; "
    "from celery.__main__ import main; sys.exit(main())"
)


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


def per_node_slice(stack: Stack) -> tuple[float, float]:
    """Instructions of a worker node's consumer and of its pool process a slice."""
    api = stack.start_api(1)
    consumer, pool = {}, {}
    for days in NODE_RUNS:
        stack.reset_target()
        consumer[days], pool[days] = _node_life(stack, api.url, days)
    api.stop()
    stack.procs.remove(api)
    few, many = NODE_RUNS
    slices = (many - few) * 24
    return (consumer[many] - consumer[few]) / slices, (pool[many] - pool[few]) / slices


def _node_life(stack: Stack, api_url: str, days: int) -> tuple[int, int]:
    """Start a node under callgrind, run the warm-up day, count a job of
    ``days`` days, stop the node: its consumer's count for the job, and its pool
    process's for its whole life."""
    out = stack.log_dir / f"node-{days}"
    out.mkdir()
    # Celery's own entry point, with automatic garbage collection off (see
    # run_slices); the forked pool process inherits that.
    args = ["-c", _CELERY_WITHOUT_GC, *procs.worker_args(f"callgrind-{os.getpid()}-{days}@%h", 1)]
    log_path = stack.log_dir / f"node-{days}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            # %p: a dump per process, the forked pool process's too.
            callgrind(out / "callgrind.%p", args),
            env={**stack.env, "ETL_METRICS_PORT": str(procs.free_port())},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = procs.Proc(f"node-{days}", popen, log_path)
    stack.procs.append(node)
    # The warm-up day also waits out the node's start: its message waits in the queue.
    _run_job(api_url, FIRST_DAY, FIRST_DAY, timeout=STARTS_UNDER_VALGRIND_S)
    pids = procs.tree(popen.pid)
    if len(pids) != 2:
        raise RuntimeError(f"expected a consumer and one pool process, found {pids}")
    subprocess.run(["callgrind_control", "--zero", str(popen.pid)], check=True, capture_output=True)
    first = FIRST_DAY + timedelta(days=1)
    _run_job(api_url, first, first + timedelta(days=days - 1), timeout=STARTS_UNDER_VALGRIND_S)
    # The last message's acknowledgement follows its job's end.
    time.sleep(1)
    subprocess.run(["callgrind_control", "--dump", str(popen.pid)], check=True, capture_output=True)
    node.stop(timeout=120)  # the pool process writes its dump as it exits
    stack.procs.remove(node)
    counted = sorted(out.glob(f"callgrind.{popen.pid}.*"))
    if not counted:
        raise RuntimeError("callgrind wrote no dump of the consumer")
    return instructions(counted[0]), instructions(out / f"callgrind.{pids[1]}")


def _run_job(api_url: str, first: date, last: date, *, timeout: float) -> None:
    """POST a job for ``first``..``last`` and wait until it has succeeded."""
    body = {"start_date": first.isoformat(), "end_date": last.isoformat(), "force": True}
    with httpx.Client(base_url=api_url, timeout=60) as client:
        job = client.post("/jobs", json=body).json()
        deadline = time.monotonic() + timeout
        while (status := client.get(f"/jobs/{job['id']}").json()["status"]) not in ENDED_JOB:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job['id']} still {status} after {timeout} s")
            time.sleep(0.2)
    if status != "succeeded":
        raise RuntimeError(f"job {job['id']} {status}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


FIGURES = ("slice", "api", "node")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "--only",
        choices=FIGURES,
        action="append",
        help="count only this figure (repeatable); default: all three",
    )
    parser.add_argument("--run-slices", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_slices is not None:
        run_slices(args.run_slices)
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_control") if not shutil.which(tool)]
    if missing:
        print(f"needs {' and '.join(missing)} (Debian's package valgrind)", file=sys.stderr)
        return 2
    wanted = args.only or FIGURES
    lines = []
    stack = Stack(days=1 + NODE_RUNS[-1])  # its own source and target, dropped at the end
    # The same hashes in every run, so the same dict layouts and work.
    stack.env["PYTHONHASHSEED"] = "0"
    # No OpenBLAS thread pool: nothing here calls BLAS, but its idle threads
    # wake and spin for as long as a process runs, and under valgrind, which
    # runs one thread at a time, that added up to 0.3 M instructions a slice
    # that varied from run to run. (A worker's pool processes never have
    # them: threads do not survive the fork.)
    stack.env["OPENBLAS_NUM_THREADS"] = "1"
    try:
        stack.seed()
        if "slice" in wanted:
            lines.append(("run_slice, one process", per_slice(stack), "slice"))
        if "api" in wanted:
            lines.append(("API, GET /data of an hour", per_request(stack), "request"))
        if "node" in wanted:
            consumer, pool = per_node_slice(stack)
            lines.append(("worker node, consumer", consumer, "slice"))
            lines.append(("worker node, pool process", pool, "slice"))
    finally:
        stack.close()
    for label, count, unit in lines:
        print(f"{label:<28}{count / 1e6:7.3f} M instructions a {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
