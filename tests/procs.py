"""The old home of the process helpers, now ``tests/support/procs.py``; kept
so that tools importing ``tests.procs`` (the multicore benchmark bundle's
import check) still find it."""

from tests.support.procs import *  # noqa: F403
