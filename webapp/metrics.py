"""``GET /metrics``: the Prometheus exposition of provisioner.metrics.

Protected: with NEOCLOUD_METRICS_TOKEN set, a scrape sends it as a bearer token (Prometheus's
``authorization: {credentials: ...}``); without it, only clients on this machine (loopback) are answered,
so a fresh installation never shows its fleet to the network. Behind a reverse proxy every client looks
local: set the token there.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from provisioner.metrics import NeocloudCollector

# One registry and collector per process: the collector keeps how far it folded the event stream.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(NeocloudCollector())


def _refused(status: int, message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _from_loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.NEOCLOUD_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _refused(401, "metrics need the bearer token set in NEOCLOUD_METRICS_TOKEN")
    elif not _from_loopback(request):
        return _refused(403, "metrics answer only this machine unless NEOCLOUD_METRICS_TOKEN is set")
    # the format the scraper asks for: Prometheus's text format by default, OpenMetrics if it prefers that
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(REGISTRY), content_type=content_type)
