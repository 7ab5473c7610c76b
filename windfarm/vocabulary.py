"""The domain's words, spelled once: source variables, statistics, signal names."""

from __future__ import annotations

from collections.abc import Sequence

# Columns of the source's ``data`` table (the misspelling is part of the contract).
VARIABLES = ("wind_speed", "power", "ambient_temprature")
# Statistics of each 10-minute window; ``std`` is the sample standard deviation.
STATS = ("mean", "min", "max", "std")


def signal_name(variable: str, stat: str) -> str:
    """The target's name for a statistic of a variable, e.g. ``power_std_10m``."""
    return f"{variable}_{stat}_10m"


def signal_names(variables: Sequence[str]) -> list[str]:
    """Every signal the given variables produce."""
    return [signal_name(v, s) for v in variables for s in STATS]


# Every name the contract defines, whether or not a worker has written it yet.
SPEC_SIGNALS = frozenset(signal_names(VARIABLES))
