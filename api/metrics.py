"""``GET /metrics``: the pipeline's state and the API's requests, in Prometheus'
text format. :func:`install` adds it to an app.

- The pipeline's series (``windfarm/metrics.py``) are read from the target
  database at each scrape.
- Requests (prometheus-fastapi-instrumentator): ``http_requests_total`` by
  ``handler`` (the route's template, e.g. ``/jobs/{job_id}``), ``method`` and
  ``status`` (``2xx`` ... ``5xx``), and ``http_request_duration_seconds`` by
  ``handler`` and ``method``. ``/metrics`` itself is not counted.

Who may read it: the rule of ``POST /jobs``. When ``API_TOKEN`` is set,
``/metrics`` needs ``Authorization: Bearer <API_TOKEN>`` (Prometheus:
``authorization.credentials_file``); when it is unset, anyone who reaches the
API may. No exception for loopback: behind a proxy on the same host every
request would come from there.

Each app has a registry of its own, so apps built side by side (tests) do not
collide. One uvicorn process serves one registry: run one process per
container and scale containers, as the compose file does.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as request_metrics

from api.deps import Authorized
from windfarm.metrics import BuildInfo, PipelineCollector

# Most answers take milliseconds; a day of GET /data tens of them.
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", dependencies=[Authorized], response_class=Response, include_in_schema=False)
def metrics(request: Request) -> Response:
    """The metrics, in the format the scraper asks for (Prometheus' text by default)."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(
        encode(request.app.state.metrics_registry), headers={"Content-Type": content_type}
    )


def install(app: FastAPI) -> None:
    """Count and time ``app``'s requests and serve ``GET /metrics``; once per app,
    before it starts."""
    if getattr(app.state, "metrics_registry", None) is not None:
        return
    registry = CollectorRegistry()
    registry.register(PipelineCollector())
    registry.register(BuildInfo())
    instrumentator = Instrumentator(excluded_handlers=["^/metrics$"], registry=registry)
    instrumentator.add(
        request_metrics.requests(registry=registry),
        request_metrics.latency(
            registry=registry, buckets=LATENCY_BUCKETS, should_include_status=False
        ),
    )
    instrumentator.instrument(app)
    app.state.metrics_registry = registry
    app.include_router(router)
