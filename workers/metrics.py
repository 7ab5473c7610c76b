"""A worker node's slice metrics, served for Prometheus on ``ETL_METRICS_PORT``
(default 9808; ``0`` turns them off) by the node's main process.

- ``windfarm_etl_worker_slice_duration_seconds{phase}`` (histogram): each
  phase of a slice, ``fetch`` (GET /data), ``compute`` (numpy) and ``write``
  (the commit); a phase that raised is timed too;
- ``windfarm_etl_worker_slices_total{outcome}`` (counter): task runs by how
  they ended: ``succeeded``, ``failed``, ``skipped`` (already ended),
  ``retried`` (a transient cause; a retry is on its way), ``waiting`` (retries
  spent: left to the reconciler);
- ``windfarm_etl_worker_rows_written_total``, ``..._source_rows_read_total``,
  ``..._values_ignored_total`` (counters): statistics rows written, source
  rows (1-minute readings) read, non-finite source values treated as missing;
- ``windfarm_etl_worker_slices_in_progress`` (gauge): slices being processed
  now, over the node's live processes;
- ``windfarm_etl_build_info{version}``: the running version.

Every prefork child records its own slices and the main process serves the
sum: prometheus-client's multiprocess mode. :func:`serve` runs in the main
process before the pool forks (Celery's ``celeryd_after_setup``): it points
``PROMETHEUS_MULTIPROC_DIR`` at a directory of the node's own,
``<tmp>/windfarm-etl-metrics/<node name>``, emptied first (counters start
from zero with the node), creates the metrics, then starts the HTTP server
in a thread. Each child writes its values to its own files there; a scrape
sums them, those of exited children included (counters never go back). A
child that exited, however it ended, is marked dead at the next scrape, so
the in-progress gauge counts live processes only.

Anywhere else (the CLI, tests) nothing is served and recording does nothing.
A recording costs a few microseconds beside a slice's milliseconds.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

log = logging.getLogger(__name__)

PHASES = ("fetch", "compute", "write")
OUTCOMES = ("succeeded", "failed", "skipped", "retried", "waiting")
# A phase takes a few milliseconds; a timeout of the API ETL_HTTP_TIMEOUT_S.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PREFIX = "windfarm_etl_worker"


@dataclass(frozen=True)
class _Recorders:
    phases: dict[str, Any]
    outcomes: dict[str, Any]
    rows_written: Any
    rows_read: Any
    values_ignored: Any
    in_progress: Any


_recorders: _Recorders | None = None
_server: Any = None
_dir: Path | None = None


# --- Recording (every process; does nothing unless the node serves metrics) ------------------


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time one phase of a slice (:data:`PHASES`)."""
    if _recorders is None:
        yield
        return
    began = perf_counter()
    try:
        yield
    finally:
        _recorders.phases[name].observe(perf_counter() - began)


@contextmanager
def in_progress() -> Iterator[None]:
    """Count a slice as being processed while inside."""
    if _recorders is None:
        yield
        return
    _recorders.in_progress.inc()
    try:
        yield
    finally:
        _recorders.in_progress.dec()


def outcome(name: str) -> None:
    """Count a task run that ended so (:data:`OUTCOMES`)."""
    if _recorders is not None:
        _recorders.outcomes[name].inc()


def rows(*, written: int, read: int, ignored: int) -> None:
    """Count a written slice's rows."""
    if _recorders is not None:
        _recorders.rows_written.inc(written)
        _recorders.rows_read.inc(read)
        _recorders.values_ignored.inc(ignored)


# --- Serving (the worker's main process) -------------------------------------------------------


def metrics_dir(nodename: str) -> Path:
    """The node's own directory of metric files."""
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", nodename)
    return Path(tempfile.gettempdir()) / "windfarm-etl-metrics" / safe


def serve(nodename: str, *, port: int, addr: str = "0.0.0.0") -> bool:
    """Set up multiprocess metrics for the node and serve them on ``port``, before
    the pool forks; whether they are served (not when ``port`` is 0 or taken)."""
    global _recorders, _server, _dir
    if not port:
        return False
    path = metrics_dir(nodename)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    from prometheus_client import CollectorRegistry, start_http_server, values

    # prometheus_client picks file-backed values when it is first imported and
    # this variable is set. The `celery` command has imported it already (for
    # Flower's plugin), so the choice is made again, before any metric of ours
    # exists; the children inherit it with the fork.
    values.ValueClass = values.get_value_class()
    from windfarm.metrics import BuildInfo

    registry = CollectorRegistry()
    registry.register(_LiveProcesses(path))
    registry.register(BuildInfo())
    try:
        _server, _ = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning("worker metrics not served: cannot listen on %s:%d: %s", addr, port, exc)
        shutil.rmtree(path, ignore_errors=True)
        return False
    _dir = path
    _recorders = _create()
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
    return True


def _create() -> _Recorders:
    """The metrics, with every label value, so that each series exists from the start."""
    from prometheus_client import Counter, Gauge, Histogram

    duration = Histogram(
        f"{PREFIX}_slice_duration_seconds",
        "Duration of a slice's phases.",
        ["phase"],
        buckets=BUCKETS,
        registry=None,
    )
    slices = Counter(f"{PREFIX}_slices", "Slice task runs by outcome.", ["outcome"], registry=None)
    return _Recorders(
        phases={name: duration.labels(phase=name) for name in PHASES},
        outcomes={name: slices.labels(outcome=name) for name in OUTCOMES},
        rows_written=Counter(f"{PREFIX}_rows_written", "Statistics rows written.", registry=None),
        rows_read=Counter(f"{PREFIX}_source_rows_read", "Source rows read.", registry=None),
        values_ignored=Counter(
            f"{PREFIX}_values_ignored",
            "Non-finite source values treated as missing.",
            registry=None,
        ),
        in_progress=Gauge(
            f"{PREFIX}_slices_in_progress",
            "Slices being processed now.",
            multiprocess_mode="livesum",
            registry=None,
        ),
    )


def forget_server() -> None:
    """In a forked child: close the listening socket it inherited from the main process."""
    if _server is not None:
        with suppress(OSError):
            _server.socket.close()


def stop() -> None:
    """Stop serving and remove the node's metric files (the main process, at shutdown)."""
    global _server, _recorders
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
    _recorders = None
    if _dir is not None:
        shutil.rmtree(_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LiveProcesses:
    """A collector: prometheus-client's MultiProcessCollector over ``path``, which
    first marks the processes that exited as dead (their live gauges no longer count)."""

    def __init__(self, path: Path) -> None:
        from prometheus_client import multiprocess

        self._multiprocess = multiprocess
        self._path = path
        self._files = multiprocess.MultiProcessCollector(None, str(path))

    def collect(self):
        for live in self._path.glob("gauge_live*_*.db"):
            pid = int(live.stem.rsplit("_", 1)[1])
            if not _alive(pid):
                self._multiprocess.mark_process_dead(pid, str(self._path))
        return self._files.collect()
