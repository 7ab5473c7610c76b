"""Helpers for the tests; the fixtures that use them are in ``tests/conftest.py``.

- ``databases``: the run's PostgreSQL and Redis, a test's databases (create,
  make current, drop) and the in-process API client.
- ``procs``: real processes (the API, workers, any server on a free port), the
  run's queue, and :class:`~tests.support.procs.Tracker`, which stops what a
  test started.
- ``waiting``: the one way to wait: :func:`~tests.support.waiting.until` a
  condition holds, and :func:`~tests.support.waiting.wait_for_job`.
- ``jobs``: a job over HTTP (post, get) and its slices' rows in the target.
- ``system``: a system of real processes (beat, Flower, a private Redis) and
  :class:`~tests.support.system.System`.
- ``proxies``: an HTTP proxy that injects faults; ``tcpproxy``: a TCP line that
  can be cut; ``rabbit``: a private RabbitMQ node; ``browser``: Chromium.
- ``oracle``: what PostgreSQL itself says the target must hold.

Nothing here imports a project module at import time: ``tests/conftest.py``
reads the run's constants from :mod:`tests.support.databases` before it points
the settings at the test databases.
"""
