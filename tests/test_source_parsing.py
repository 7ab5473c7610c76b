"""Parsing a ``GET /data`` body (workers.source) through ``fetch_slice`` on a mock API.

PostgreSQL's JSON writes a float8 that is not finite as the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"``: such a value is kept (the statistics ignore
it) and counted in ``SliceData.ignored``; NULL is NaN and not counted.
"""

from __future__ import annotations

import math
import os
from base64 import b64encode
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import numpy as np
import orjson
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from workers.errors import BadPayload, SourceUnavailable
from workers.source import SliceData, fetch_slice

H10 = datetime(2025, 12, 5, 10)
VARIABLES = ("wind_speed", "power")
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
INF = math.inf


def fetch(body: bytes, variables: tuple[str, ...] = VARIABLES) -> SliceData:
    """``fetch_slice`` of 10:00 on an API that answers ``body``."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/data"
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        return fetch_slice(H10, variables=variables, client=client)


def body_of(*values: tuple[object, object], extra: dict | None = None) -> bytes:
    """A body with one row a minute from 10:00: ``(wind_speed, power)`` each."""
    rows = [
        {"timestamp": (H10 + timedelta(minutes=i)).isoformat(), "wind_speed": w, "power": p}
        | (extra or {})
        for i, (w, p) in enumerate(values)
    ]
    return orjson.dumps(rows)


def same(actual: np.ndarray, expected: list[float]) -> bool:
    """Equal arrays, NaN equal to NaN."""
    return np.array_equal(actual, np.array(expected), equal_nan=True)


def test_non_finite_spellings_are_kept_and_counted():
    data = fetch(body_of((1.5, "Infinity"), ("NaN", "-Infinity"), (None, 3), (2.5, None)))
    assert data.timestamps.tolist() == [H10 + timedelta(minutes=i) for i in range(4)]
    assert same(data.columns["wind_speed"], [1.5, math.nan, math.nan, 2.5])
    assert same(data.columns["power"], [INF, -INF, 3.0, math.nan])
    assert data.columns["power"].dtype == np.float64
    assert data.ignored == 3


def test_nulls_are_not_counted():
    data = fetch(body_of((None, None), (None, 812.5), (7, None)))
    assert same(data.columns["wind_speed"], [math.nan, math.nan, 7.0])
    assert data.ignored == 0


def test_only_the_requested_variables_are_counted():
    data = fetch(body_of(("NaN", 1.0), extra={"rotor_speed": "Infinity"}), variables=("power",))
    assert list(data.columns) == ["power"] and data.ignored == 0
    assert fetch(body_of(("NaN", 1.0)), variables=("wind_speed",)).ignored == 1


def test_a_slice_without_rows_ignores_nothing():
    data = fetch(b"[]")
    assert len(data) == 0 and data.ignored == 0
    assert all(len(column) == 0 for column in data.columns.values())


@pytest.mark.parametrize(
    "value",
    ["abc", "nan", "inf", "+Infinity", "1.5", "", True, [1.0], {"v": 1.0}],
    ids=repr,
)
def test_any_other_value_is_a_bad_payload(value: object):
    with pytest.raises(BadPayload, match="malformed rows"):
        fetch(body_of((1.0, 2.0), (value, 3.0)))


def test_the_message_names_the_unknown_string():
    with pytest.raises(BadPayload, match="'oops' is not a number"):
        fetch(body_of(("NaN", "oops")))


# --- PostgreSQL's own JSON ------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[object]:
    engine = create_engine(f"{PG_URL}/postgres", poolclass=NullPool)
    yield engine
    engine.dispose()


def test_postgresql_json_of_non_finite_values_parses(postgres):
    # The API's query shape (api/routes/data.py) over literal rows.
    query = text(
        """SELECT coalesce(json_agg(d ORDER BY "timestamp"), '[]')::text
           FROM (VALUES (timestamp '2025-12-05 10:00', 'NaN'::float8, 1.5::float8),
                        ('2025-12-05 10:01', 'Infinity', NULL),
                        ('2025-12-05 10:02', '-Infinity', 'Infinity'),
                        ('2025-12-05 10:03', NULL, -2.25),
                        ('2025-12-05 10:04:30.25', 7.125, 'NaN')
                ) d("timestamp", wind_speed, power)"""
    )
    with postgres.connect() as conn:
        body = conn.scalar(query)
    assert '"NaN"' in body and '"Infinity"' in body and '"-Infinity"' in body
    data = fetch(body.encode())
    last = H10 + timedelta(minutes=4, seconds=30, microseconds=250_000)
    assert data.timestamps.tolist()[-1] == last
    assert same(data.columns["wind_speed"], [math.nan, INF, -INF, math.nan, 7.125])
    assert same(data.columns["power"], [1.5, math.nan, INF, -2.25, math.nan])
    assert data.ignored == 5


def test_credentials_in_the_api_url_become_basic_auth_and_stay_out_of_messages(settings_env):
    """A user:password in ``API_BASE_URL`` is sent as Basic credentials, as
    ``httpx.Client`` would, and never named in an error."""
    settings_env(API_BASE_URL="http://etl:s%40cret@api.internal:8000/")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, text="down for a moment")

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        pytest.raises(SourceUnavailable) as raised,
    ):
        fetch_slice(H10, variables=VARIABLES, client=client)
    (request,) = seen
    assert request.url.host == "api.internal" and request.url.path == "/data"
    assert request.url.userinfo == b""
    assert request.headers["Authorization"] == "Basic " + b64encode(b"etl:s@cret").decode()
    assert "http://api.internal:8000/data" in str(raised.value)
    assert "cret" not in str(raised.value) and "etl:" not in str(raised.value)
