"""Prometheus metrics of the registry, named once here; served on its own `/metrics`.

Counts every request by method and status, and registrations by outcome (new, existing, refused).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "streamml_registry_requests_total", "Registry HTTP requests by method and status.", ["method", "status"]
)
REQUEST_SECONDS = Histogram("streamml_registry_request_seconds", "Time to answer a registry request.", ["method"])
REGISTRATIONS = Counter(
    "streamml_registry_registrations_total",
    "Schema registrations by outcome: new, existing, incompatible, invalid.",
    ["outcome"],
)


async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Middleware: one count and one latency sample per request, failures included."""
    start = time.perf_counter()
    status = "500"
    try:
        response = await call_next(request)
        status = str(response.status_code)
        return response
    finally:
        REQUESTS.labels(request.method, status).inc()
        REQUEST_SECONDS.labels(request.method).observe(time.perf_counter() - start)
