"""Bad input: the API fuzzed from its own OpenAPI schema, and its size limits.

Schemathesis generates requests for every operation, valid and invalid, and
checks each answer: never a 5xx, only documented status codes and content
types, bodies that match the documented schema, and invalid requests refused
with a 4xx. The token is configured, so the fuzzer also tries ``POST /jobs``
without it. The limits are then checked one by one on a real server.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.limits import MAX_BODY_BYTES, MAX_QUERY_BYTES
from api.main import create_app
from tests.support.databases import module_databases, use_databases
from tests.support.procs import purge_run_queue

TOKEN = "fuzz-t0ken"
# Per operation; about 12 operations. Enough to find the classic 500s (number
# overflows, odd offsets, huge ids) in well under a minute on 2 cores.
MAX_EXAMPLES = 250
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# The schema comes straight from the app object: loading it through the app
# (from_asgi) would run its lifespan at import, creating the run's default
# target database before any fixture has chosen the test's own.
app = create_app()
schema = schemathesis.openapi.from_dict(
    app.openapi(),
    config=SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
            # Refusing an over-long query string (414) is a rejection too.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [
                        400,
                        401,
                        403,
                        404,
                        405,
                        406,
                        409,
                        413,
                        414,
                        415,
                        422,
                        428,
                        429,
                    ]
                }
            },
        }
    ),
)
schema.app = app  # requests go to the app in process, as from_asgi would send them
cases: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_databases():
    """Databases of the fuzz run's own; the jobs the fuzzer posts are sent to the
    run's queue, which is emptied afterwards."""
    with module_databases("fuzz") as dbs:
        yield dbs
    purge_run_queue()
    main = {op: n for op, n in cases.items() if n > 1}
    others = sum(cases.values()) - sum(main.values())
    print(
        f"\nfuzzed {sum(cases.values())} requests: "
        + ", ".join(f"{op} {n}" for op, n in main.items())
        + f", and {others} with undocumented methods"
    )


@pytest.fixture
def fuzz_dbs(fuzz_databases, settings_env):
    """The fuzz databases made current, with API_TOKEN set for this test only."""
    use_databases(fuzz_databases)
    settings_env(API_TOKEN=TOKEN)
    return fuzz_databases


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_every_answer_is_documented_and_no_input_makes_a_5xx(case, fuzz_dbs):
    cases[f"{case.method} {case.path}"] += 1
    case.call_and_validate(checks=CHECKS)


# --- Bounds, on a real server ---------------------------------------------------


def test_a_body_over_the_limit_is_413_with_a_reason(api_server):
    padding = "x" * MAX_BODY_BYTES
    response = httpx.post(f"{api_server.url}/jobs", json={"date": "2025-12-05", "pad": padding})
    assert response.status_code == 413
    assert response.json() == {"detail": f"the request body is larger than {MAX_BODY_BYTES} bytes"}


def test_a_chunked_body_over_the_limit_is_413_too(api_server):
    def chunks():
        yield b'{"date": "2025-12-05", "pad": "'
        for _ in range(MAX_BODY_BYTES // 512 + 1):
            yield b"x" * 512
        yield b'"}'

    response = httpx.post(
        f"{api_server.url}/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 413


def test_a_body_within_the_limit_still_works_chunked(api_server):
    def chunks():
        yield b'{"date": '
        yield b'"2025-12-05"}'

    response = httpx.post(
        f"{api_server.url}/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    purge_run_queue()


def test_a_long_query_string_is_414(api_server):
    response = httpx.get(
        f"{api_server.url}/data",
        params={"start": "2025-12-05T00:00:00", "x": "y" * MAX_QUERY_BYTES},
    )
    assert response.status_code == 414
    assert "query string" in response.json()["detail"]


def test_a_content_length_that_is_no_number_is_400(client):
    response = client.post(
        "/jobs",
        content=b"{}",
        headers={"Content-Length": "lots", "Content-Type": "application/json"},
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        # A bare number would be read as a Unix timestamp: 20251205 s is 1970-08-23.
        ("/data", {"start": "20251205"}, "start '20251205' is not an ISO 8601 date-time"),
        ("/data", {"start": "0001-01-01T00:00:00+01:00"}, "out of range once converted to UTC"),
        ("/data", {"start": "2025-12-05", "end": "9999-12-31T23:00:00-02:00"}, "out of range"),
        ("/series", {"signal": "power_mean_10m", "start": "1733011200"}, "not an ISO 8601"),
        ("/partitions", {"start_date": "0"}, "start_date '0' is not an ISO 8601 date"),
        ("/data", {"start": "2025-12-05", "variables": ["power"] * 11}, "variables"),
        ("/series", {"signal": [f"s{i}" for i in range(13)], "start": "2025-12-05"}, "at most 12"),
        ("/jobs/99999999999999999999", {}, "job_id"),
        ("/jobs/0", {}, "job_id"),
    ],
)
def test_out_of_bounds_input_is_a_422_that_says_why(client, path, params, message):
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_a_number_for_a_job_date_is_refused(client):
    response = client.post("/jobs", json={"date": 20251205})
    assert response.status_code == 422
    assert "is not an ISO 8601 date" in response.json()["detail"]
