"""``GET /metrics``: the pipeline's state and the API's requests, in Prometheus'
text format. :func:`install` adds it to an app.

- The pipeline's series (``windfarm/metrics.py``) are read from the target
  database at each scrape.
- Requests (:class:`RequestMetrics`): ``http_requests_total`` by ``handler``
  (the route's template, e.g. ``/jobs/{job_id}``; ``none`` where no route
  matched), ``method`` and ``status`` (``2xx`` ... ``5xx``), and
  ``http_request_duration_seconds`` by ``handler`` and ``method``.
  ``/metrics`` itself is not counted.

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

from time import perf_counter

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    app.add_middleware(RequestMetrics, registry=registry)
    app.state.metrics_registry = registry
    app.include_router(router)


UNMATCHED = "none"


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request but those of ``/metrics``.

    The route comes from the scope after the router has matched it (Starlette
    puts it there), so the request is not routed a second time to name it. A
    request that matched no route counts under :data:`UNMATCHED`; one whose
    method the route does not allow (405) under the route; one that raised
    before its answer as a ``5xx``.
    """

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status class.",
            ["handler", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to the end of each answer, by route template and method.",
            ["handler", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = perf_counter()
        status = 500

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path", None) or UNMATCHED
            if handler != "/metrics":
                method = scope["method"]
                self.requests.labels(handler, method, f"{status // 100}xx").inc()
                self.latency.labels(handler, method).observe(perf_counter() - began)
