"""Fetch one slice of source data from the API (``GET /data``).

One :class:`ApiClient` per process, made on first use: the prefork pool
forks after import, and a client shared across a fork would share sockets.
Tests pass their own ``httpx.Client`` (e.g. on ``httpx.MockTransport``).
"""

from __future__ import annotations

import os
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Protocol
from urllib.parse import unquote, urlencode

import httpx
import numpy as np
import orjson

from windfarm.config import get_settings
from windfarm.timeutil import HOUR
from workers.errors import BadPayload, SourceRejected, SourceUnavailable

_DETAIL_CHARS = 200
USER_AGENT = "windfarm-etl-worker"


# PostgreSQL's JSON spells a float8 that is not finite as a string. Such a value
# is a reading the sensor could not make: missing, like NULL, but counted.
_NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})
_NUMERIC = frozenset({float, int, type(None)})


@dataclass(frozen=True)
class SliceData:
    """Source rows of one slice as arrays: NaN where the source holds NULL.

    A non-finite source value (NaN, Infinity, -Infinity) stays NaN or +/-inf in
    its column, which the statistics ignore; ``ignored`` counts them over the
    requested variables. NULLs are not counted.
    """

    timestamps: np.ndarray  # datetime64[us]
    columns: dict[str, np.ndarray]
    ignored: int = 0

    def __len__(self) -> int:
        return len(self.timestamps)


class Getter(Protocol):
    """What :func:`fetch_slice` needs of a client: ``httpx.Client.get``'s shape."""

    def get(self, url: str, *, headers: dict[str, str]) -> httpx.Response: ...


class ApiClient:
    """GET requests on one pooled httpx transport, each read whole.

    It does for these requests what ``httpx.Client.get`` does, without what
    they never need of a client (URL merging, cookies, redirects, auth
    flows, event hooks), a quarter of the CPU of a slice's fetch. Requests
    and errors are httpx's own.
    """

    def __init__(self, timeout_s: float) -> None:
        self.transport = httpx.HTTPTransport(
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2)
        )
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)).as_dict()

    def get(self, url: str, *, headers: dict[str, str]) -> httpx.Response:
        request = httpx.Request(
            "GET",
            url,
            headers={"User-Agent": USER_AGENT, **headers},
            extensions={"timeout": self.timeout},
        )
        response = self.transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response

    def close(self) -> None:
        self.transport.close()


_clients: dict[int, ApiClient] = {}


def http_client() -> ApiClient:
    """This process's client, with the timeouts of ``ETL_HTTP_TIMEOUT_S``."""
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = ApiClient(get_settings().etl_http_timeout_s)
    return client


def close_clients() -> None:
    """Close this process's client and forget those inherited from a parent."""
    client = _clients.pop(os.getpid(), None)
    if client is not None:
        client.close()
    _clients.clear()


@dataclass(frozen=True)
class Endpoint:
    """``GET /data`` of an ``API_BASE_URL``: the URL without any user:password
    it carries, and the Basic credentials they make (as ``httpx.Client`` would)."""

    url: str
    headers: dict[str, str]


@lru_cache(maxsize=4)
def data_endpoint(api_base_url: str) -> Endpoint:
    url = httpx.URL(api_base_url.rstrip("/") + "/data")
    headers = {}
    if url.username or url.password:
        userinfo = f"{unquote(url.username)}:{unquote(url.password or '')}"
        headers["Authorization"] = "Basic " + b64encode(userinfo.encode()).decode()
    return Endpoint(str(url.copy_with(username=None, password=None)), headers)


def fetch_slice(
    hour: datetime, *, variables: Sequence[str], client: Getter | None = None
) -> SliceData:
    """The source rows of ``[hour, hour + 1 h)`` for ``variables``.

    Raises :class:`SourceUnavailable` (retry) or :class:`SourceRejected` /
    :class:`BadPayload` (do not).
    """
    query = urlencode(
        [
            ("start", hour.isoformat()),
            # The API's end is inclusive; stop one microsecond before the next hour.
            ("end", (hour + HOUR - timedelta(microseconds=1)).isoformat()),
            *(("variables", v) for v in variables),
        ]
    )
    endpoint = data_endpoint(get_settings().api_base_url)
    # Errors name the API without any user:password the URL may carry.
    where = f"GET {endpoint.url} for {hour.isoformat()}"
    try:
        response = (client or http_client()).get(
            f"{endpoint.url}?{query}", headers=endpoint.headers
        )
    except httpx.TimeoutException as exc:
        raise SourceUnavailable(f"{where} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise SourceUnavailable(f"{where}: API unreachable ({type(exc).__name__}: {exc})") from exc
    _check_status(response, where)
    return parse_rows(response.content, hour=hour, variables=variables)


def _check_status(response: httpx.Response, where: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"{where} answered HTTP {status}: {_detail(response)}"
    if status >= 500 or status == 429:
        raise SourceUnavailable(message)
    raise SourceRejected(message)


def _detail(response: httpx.Response) -> str:
    """The API's own explanation (FastAPI's ``detail``), else the start of the body."""
    try:
        detail = orjson.loads(response.content).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else response.text
    return " ".join(text.split())[:_DETAIL_CHARS] or response.reason_phrase


def parse_rows(body: bytes, *, hour: datetime, variables: Sequence[str]) -> SliceData:
    """Arrays from a ``GET /data`` body; :class:`BadPayload` unless it is rows of the slice.

    A value is a number, null, or one of the strings ``"NaN"``, ``"Infinity"``
    and ``"-Infinity"`` (PostgreSQL's JSON for such a float8); anything else is
    a malformed row.
    """
    try:
        rows = orjson.loads(body)
        timestamps = np.array([r["timestamp"] for r in rows], dtype="datetime64[us]")
        columns, ignored = {}, 0
        for variable in variables:
            columns[variable], non_finite = _column([r[variable] for r in rows])
            ignored += non_finite
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise BadPayload(
            f"GET /data for {hour.isoformat()} returned malformed rows "
            f"({type(exc).__name__}: {str(exc)[:_DETAIL_CHARS]})"
        ) from exc
    first, end = np.datetime64(hour, "us"), np.datetime64(hour + HOUR, "us")
    if np.isnat(timestamps).any():
        raise BadPayload(f"GET /data for {hour.isoformat()} returned a row without a timestamp")
    if len(timestamps) and (timestamps.min() < first or timestamps.max() >= end):
        raise BadPayload(f"GET /data for {hour.isoformat()} returned rows outside the hour")
    return SliceData(timestamps, columns, ignored)


def _column(raw: list) -> tuple[np.ndarray, int]:
    """One variable's values as floats, and how many of them are not finite.

    NULL becomes NaN and is not counted. Raises ``TypeError`` or ``ValueError``
    for a value that is not a number, null or a non-finite spelling.
    """
    # One pass over the types in C; strings (rare) are the only slow path.
    kinds = set(map(type, raw))
    nan_strings = 0
    if not kinds <= _NUMERIC:
        if not kinds <= _NUMERIC | {str}:
            odd = next(k for k in kinds if k not in _NUMERIC and k is not str)
            raise TypeError(f"a value of type {odd.__name__} is not a number")
        strings = [v for v in raw if type(v) is str]
        unknown = set(strings) - _NON_FINITE
        if unknown:
            raise ValueError(f"the string {min(unknown)!r} is not a number")
        nan_strings = strings.count("NaN")
    values = np.array(raw, dtype=np.float64)
    # JSON numbers are never NaN, so a NaN is a NULL or a "NaN"; an infinity is
    # an "Infinity", a "-Infinity" or (were a parser to allow it) a huge number.
    return values, int(np.count_nonzero(np.isinf(values))) + nan_strings
