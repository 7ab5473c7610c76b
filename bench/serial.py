"""Where a benchmark run's serial limits are, measured while it lasts.

Adding worker processes helps only while no single part of the stack is
full. Three figures show which part fills first:

- :func:`busiest`: for each component that runs as single-threaded processes
  (each API process, each worker node's consumer, Redis), the share of one
  core its busiest process used, and the slices/s at which that process
  would be full (the run's rate divided by that share). A component whose
  ceiling is near the run's rate is the serial limit; more worker processes
  cannot pass it, more instances of that component can.
- :func:`core_shares`: what the machine's cores did meanwhile (user, system,
  idle, stolen by the host), from ``/proc/stat``. Idle cores while slices
  wait mean that the work is not CPU-bound: something hands slices over
  too slowly, or makes them wait on each other.
- :class:`WaitSampler`: what the benchmark's PostgreSQL backends are doing,
  sampled from ``pg_stat_activity`` while the run lasts: on CPU, or waiting
  for a lock (a hot row, the hour's advisory lock, a buffer or WAL lock) or
  for I/O. A contended lock shows here as a wait that grows with the
  number of worker processes; its time per slice is PostgreSQL's side of
  the limit.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

# The components that run as single-threaded processes (an API process's
# thread pool shares one interpreter lock): one of them can use one core.
SINGLE_THREADED = ("api", "consumer", "broker")
ON_CPU = "CPU"

_ACTIVITY = text(
    "SELECT coalesce(wait_event_type || ':' || wait_event, :on_cpu) FROM pg_stat_activity "
    "WHERE datname = ANY(:databases) AND state = 'active' AND pid <> pg_backend_pid()"
)


def busiest(
    spent: dict[str, dict[int, float]], *, wall_s: float, slices_per_s: float, broker: str
) -> dict[str, dict[str, float]]:
    """Per single-threaded component, its busiest process's share of one core
    (``core_share``) and the slices/s at which it would be full (``full_at``),
    from the CPU seconds each process spent during a run of ``wall_s``.
    RabbitMQ runs many threads in one process: no ceiling for it."""
    figures: dict[str, dict[str, float]] = {}
    for part in SINGLE_THREADED:
        seconds = spent.get(part) or {}
        if not seconds or (part == "broker" and broker != "redis"):
            continue
        share = max(seconds.values()) / wall_s
        figures[part] = {
            "core_share": share,
            "full_at": slices_per_s / share if share > 0 else float("inf"),
        }
    return figures


# /proc/stat's first line: the machine's CPU time by kind, in clock ticks.
_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_SHOWN = {
    "user": ("user", "nice"),
    "system": ("system", "irq", "softirq"),
    "idle": ("idle", "iowait"),
    "steal": ("steal",),
}


def core_times(stat: str | None = None) -> dict[str, int] | None:
    """The machine's CPU time so far by kind (``/proc/stat``, or its text
    ``stat``); None where there is none."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return None
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        return None
    ticks = dict(zip(_KINDS, (int(f) for f in fields[1:]), strict=False))
    return {kind: sum(ticks.get(k, 0) for k in parts) for kind, parts in _SHOWN.items()}


def core_shares(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float]:
    """The share of the cores' time each kind took between two :func:`core_times`."""
    if before is None or after is None:
        return {}
    spent = {kind: after[kind] - before[kind] for kind in _SHOWN}
    total = sum(spent.values())
    return {kind: ticks / total for kind, ticks in spent.items()} if total > 0 else {}


class WaitSampler:
    """Samples the active backends of ``databases`` every ``every_s`` on a
    connection of its own, from :meth:`start` to :meth:`stop`.

    Twenty queries a second by default, each about 0.3 ms of PostgreSQL's CPU
    (under a hundredth of a core); :attr:`backend_pid` names the backend they
    run on, so that its CPU can be left out of the pipeline's.
    """

    def __init__(self, url: str, databases: list[str], *, every_s: float = 0.05) -> None:
        self.url = url
        self.databases = databases
        self.every_s = every_s
        self.samples = 0
        # The sampler's own backend, whose CPU is not the pipeline's.
        self.backend_pid: int | None = None
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-wait-sampler", daemon=True)

    def start(self) -> WaitSampler:
        self._thread.start()
        return self

    def stop(self) -> dict:
        """Stop sampling; the summary (see :func:`summary`)."""
        self._stop.set()
        self._thread.join(timeout=10)
        return summary(self.counts, self.samples)

    def _run(self) -> None:
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        params = {"databases": self.databases, "on_cpu": ON_CPU}
        try:
            with engine.connect() as conn:
                self.backend_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                while not self._stop.is_set():
                    self.counts.update(conn.execute(_ACTIVITY, params).scalars())
                    self.samples += 1
                    time.sleep(self.every_s)
        finally:
            engine.dispose()


def summary(counts: Counter[str], samples: int) -> dict:
    """``mean_active``: backends at work on average; ``shares``: of that, the
    share on CPU and waiting for each wait event, largest first."""
    active = sum(counts.values())
    return {
        "samples": samples,
        "mean_active": active / samples if samples else 0.0,
        "shares": {event: n / active for event, n in counts.most_common()} if active else {},
    }
