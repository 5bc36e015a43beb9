"""Webhooks: an organization's endpoints, and the delivery of its events to them.

Three parts, none of them inside a transaction that changes the fleet:

- **Endpoints** (``create_endpoint``, ``update_endpoint``, ``delete_endpoint``): an https URL (http only to
  a loopback address, for tests and local tools), the event types wanted (none: all), a secret made here,
  encrypted at rest and returned once.
- **Where deliveries may go**: public addresses only. A customer names the URL, so a URL that points into
  the operator's networks (private, link-local such as a cloud's metadata service at 169.254.169.254,
  carrier-grade NAT, the lab's 198.18.0.0/15, multicast, reserved) would make the control plane a
  customer's proxy into them. An address literal is refused at registration; a host name is resolved at
  delivery, every address it resolves to must be public, and the connection goes to the address that was
  checked (the TLS name and Host header stay the URL's), so a name that re-resolves to an inner address
  between the check and the connection (DNS rebinding) gains nothing. Loopback is allowed only with
  NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK (on unless NEOCLOUD_PRODUCTION: tests, the demo, local tools).
- **The dispatcher** (``dispatch``, run by the scheduler's pass through ``pump``): reads the event stream
  after each endpoint's cursor and writes one pending delivery per event and endpoint that wants it,
  moving the cursors in the same transaction (a crash leaves both or neither). Reading the stream after
  the fact is what keeps the engine's transactions free of HTTP.
- **Delivery passes** (``deliver_pass``, the task ``deliver_webhooks`` on the ``webhooks`` queue, queued
  by ``kick``): one pass per endpoint at a time (a lease on its row), sending its due deliveries oldest
  first with short timeouts. A delivery waits while an earlier one with the same ordering key (one server,
  one reservation) to the same endpoint is pending: order per server. A failure is retried with
  exponential backoff (``backoff``) for a day, then given up (recorded). An endpoint that does not answer
  (refused, timed out) ends its pass and puts its other due deliveries off to the same retry time, so a
  dead endpoint costs one attempt per retry step, and other endpoints' passes run beside it.

Every attempt is recorded (WebhookAttempt: outcome, status code, error, latency): the delivery log.

Signature: ``Neocloud-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>``;
docs/events-and-metrics.md shows how to verify it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import urllib3
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from provisioner import events
from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor, record
from provisioner.models import Event, Organization, WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger("provisioner.webhooks")

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of generated secrets, not a secret
SIGNATURE_HEADER = "Neocloud-Signature"
USER_AGENT = "Neocloud-Webhooks/1"
# Events turned into deliveries per dispatcher transaction; the rest in the next pass.
DISPATCH_BATCH = 500
# A delivery pass ends after this long (the rest is queued again): one endpoint's backlog does not hold a
# worker thread for ever, and other queues' tasks get their turn.
PASS_SECONDS = 30.0
# A queued pass that has not started after this long is taken as lost and queued again.
QUEUED_GRACE_SECONDS = 120.0
# Deliveries read per query within a pass.
PAGE = 500
# Successes written together (one transaction) at most this many, or this often.
FLUSH_EVERY = 100
FLUSH_SECONDS = 1.0
# Most bytes of an answer read (its body is not used; reading lets the connection be reused).
ANSWER_BYTES = 65536

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


# --- endpoints -------------------------------------------------------------------------------------


def validate_url(url: str) -> str:
    """The URL, stripped, if deliveries may go there: https to any host, http only to loopback.

    :raises InvalidRequest: with a sentence saying what is wrong.
    """
    url = (url or "").strip()
    if len(url) > 500:
        raise InvalidRequest("the URL is longer than 500 characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # a port that is no number raises here
    except ValueError as exc:
        raise InvalidRequest(f"{url[:100]!r} is no valid URL: {exc}")
    del port
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRequest(
            f"{url[:100]!r} is no http(s) URL with a host, such as https://example.com/hooks"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("the URL must not carry a user name or password: the signature authenticates us")
    if parts.fragment:
        raise InvalidRequest("the URL must not have a #fragment")
    if _loopback(parts.hostname) and not settings.NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK:
        raise InvalidRequest(
            f"{parts.hostname} is this machine: deliveries go to public addresses only "
            "(NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK allows loopback for tests and local tools)"
        )
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise InvalidRequest(
            f"http is allowed only to this machine (127.0.0.1, ::1, localhost), not to {parts.hostname}: "
            "use https, so that events travel encrypted"
        )
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url  # a name: resolved and checked at each delivery
    why = why_not_deliverable(literal)
    if why:
        raise InvalidRequest(f"{parts.hostname} is {why}: deliveries go to public addresses only")
    return url


def _loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def why_not_deliverable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """'' when deliveries may go to ``address``; else what it is (a private address, ...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return why_not_deliverable(address.ipv4_mapped)
    if address.is_loopback:
        return "" if settings.NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK else "a loopback address"
    if address.is_link_local:
        return "a link-local address (a cloud metadata service lives there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified or address.is_reserved:
        return "a reserved address"
    if address.is_private or not address.is_global:
        return "a private address"
    return ""


class Undeliverable(Exception):
    """The endpoint's host resolves to no address deliveries may go to."""


def resolve(host: str, port: int) -> str:
    """The address to connect to for ``host``: every address it resolves to must be deliverable (a name
    with one inner address among public ones is refused: which one a client takes is not ours to choose).

    :raises Undeliverable: with a sentence.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Undeliverable(f"{host} does not resolve: {exc.strerror or exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        why = why_not_deliverable(ipaddress.ip_address(address.split("%", 1)[0]))
        if why:
            raise Undeliverable(
                f"{host} resolves to {address}, {why}: deliveries go to public addresses only"
            )
    if not addresses:
        raise Undeliverable(f"{host} resolves to no address")
    return addresses[0]


def validate_event_types(types: Iterable[str] | None) -> list[str]:
    """The event types, each once, in the stream's order of types; empty: every type.

    :raises InvalidRequest: a type the stream does not carry.
    """
    wanted = {str(t).strip() for t in (types or []) if str(t).strip()}
    unknown = sorted(wanted - set(Event.Type.values))
    if unknown:
        raise InvalidRequest(
            f"unknown event type(s): {', '.join(unknown)}; known: {', '.join(Event.Type.values)}"
        )
    return [t for t in Event.Type.values if t in wanted]


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def create_endpoint(
    org: Organization,
    url: str,
    *,
    actor: Actor,
    event_types: Iterable[str] | None = None,
    description: str = "",
    active: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its secret (the only time the secret is returned). It gets
    the events that happen from now on (its cursor starts at the end of the stream).

    :raises InvalidRequest: the URL or an event type is refused.
    """
    url = validate_url(url)
    types = validate_event_types(event_types)
    secret = new_secret()
    events.sequence_committed()
    with transaction.atomic():
        endpoint = WebhookEndpoint(
            organization=org,
            url=url,
            description=description[:200],
            event_types=types,
            active=active,
            created_by=actor.user,
            after_sequence=Event.objects.aggregate(last=Max("sequence"))["last"] or 0,
        )
        endpoint.secret = secret
        endpoint.save()
        record(
            actor,
            "webhook_created",
            organization=org,
            reason=url,
            data={"webhook": endpoint.pk, "event_types": types},
        )
    return endpoint, secret


def update_endpoint(
    endpoint: WebhookEndpoint,
    *,
    actor: Actor,
    url: str | None = None,
    event_types: Iterable[str] | None = None,
    description: str | None = None,
    active: bool | None = None,
) -> WebhookEndpoint:
    """Change what is given (None: unchanged). Deliveries already made keep going to the endpoint as it
    is when they are sent; a change of types applies to events dispatched from now on.

    :raises InvalidRequest: the URL or an event type is refused.
    """
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = validate_url(url)
    if event_types is not None:
        changes["event_types"] = validate_event_types(event_types)
    if description is not None:
        changes["description"] = description[:200]
    if active is not None:
        changes["active"] = active
    with transaction.atomic():
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(**changes)
        endpoint.refresh_from_db()
        record(
            actor,
            "webhook_updated",
            organization=endpoint.organization,
            reason=endpoint.url,
            data={"webhook": endpoint.pk, "changed": sorted(changes)},
        )
    return endpoint


def delete_endpoint(endpoint: WebhookEndpoint, *, actor: Actor) -> None:
    """Remove the endpoint, its pending deliveries and its log."""
    with transaction.atomic():
        record(
            actor,
            "webhook_deleted",
            organization=endpoint.organization,
            reason=endpoint.url,
            data={"webhook": endpoint.pk},
        )
        endpoint.delete()


def send_test(endpoint: WebhookEndpoint, *, actor: Actor) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery to the endpoint (signed as any other), sent at once.

    :raises InvalidRequest: the endpoint is not active.
    """
    if not endpoint.active:
        raise InvalidRequest("this endpoint is inactive: activate it to send it a test event")
    now = timezone.now()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint,
            event=None,
            event_type=WebhookDelivery.TEST_EVENT_TYPE,
            created_at=now,
            event_at=now,
            next_attempt_at=now,
        )
        record(
            actor,
            "webhook_test",
            organization=endpoint.organization,
            reason=endpoint.url,
            data={"webhook": endpoint.pk, "delivery": delivery.pk},
        )
        kick(endpoint_ids=[endpoint.pk], now=now)
    return delivery


# --- signing ---------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` with ``secret``."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = 300, now: float | None = None
) -> bool:
    """Whether ``header`` (a Neocloud-Signature) signs ``body`` with ``secret``, made within
    ``tolerance`` seconds of ``now``: what a receiver does (docs/events-and-metrics.md)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), fields.get("v1", ""))


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def body_of(delivery: WebhookDelivery, event: dict[str, Any] | None, org_slug: str) -> bytes:
    """The JSON a delivery POSTs: the event as GET /api/v1/events shows it. A test delivery carries a
    ``webhook.test`` event of id null."""
    if event is None:
        data: dict[str, Any] = {
            "id": None,
            "type": WebhookDelivery.TEST_EVENT_TYPE,
            "version": 1,
            "organization": org_slug,
            "created_at": _iso(delivery.created_at),
            "payload": {
                "webhook": delivery.endpoint_id,
                "message": "a test event sent from Neocloud: this endpoint is reached and verifies signatures",
            },
        }
    else:
        data = {
            "id": event["sequence"],
            "type": event["type"],
            "version": event["version"],
            "organization": org_slug,
            "created_at": _iso(event["created_at"]),
            "payload": event["payload"],
        }
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


# --- dispatching -----------------------------------------------------------------------------------


def ordering_key(event_type: str, payload: dict[str, Any]) -> str:
    """What a delivery keeps its order with: its server's, else its reservation's deliveries."""
    node = payload.get("node")
    if isinstance(node, dict) and node.get("id") is not None:
        return f"node:{node['id']}"
    if event_type.startswith("reservation."):
        reservation = payload.get("reservation")
        if isinstance(reservation, dict) and reservation.get("id") is not None:
            return f"reservation:{reservation['id']}"
    return ""


class _CursorMoved(Exception):
    """Another dispatcher moved an endpoint's cursor meanwhile: this pass's batch is theirs."""


def dispatch(batch: int = DISPATCH_BATCH) -> int:
    """Turn the stream's new events into pending deliveries for the active endpoints that want them;
    returns how many deliveries it wrote. Each endpoint's cursor moves in the transaction that writes its
    deliveries (compare and set: two dispatchers at once never both write the same batch)."""
    events.sequence_committed()
    try:
        with transaction.atomic():
            return _dispatch(batch)
    except _CursorMoved:
        return 0


def _dispatch(batch: int) -> int:
    endpoints = list(WebhookEndpoint.objects.filter(active=True).order_by("pk"))
    if not endpoints:
        return 0
    low = min(e.after_sequence for e in endpoints)
    rows = list(
        Event.objects.filter(sequence__gt=low, organization_id__in={e.organization_id for e in endpoints})
        .order_by("sequence")
        .values("pk", "sequence", "type", "organization_id", "created_at", "payload")[:batch]
    )
    if not rows:
        return 0
    last = rows[-1]["sequence"]
    # Every event of these organizations in (low, last] is in rows: each endpoint has seen up to last.
    for endpoint in endpoints:
        if endpoint.after_sequence < last and not WebhookEndpoint.objects.filter(
            pk=endpoint.pk, after_sequence=endpoint.after_sequence
        ).update(after_sequence=last):
            raise _CursorMoved
    by_org: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_org[row["organization_id"]].append(row)
    now = timezone.now()
    deliveries = [
        WebhookDelivery(
            endpoint_id=endpoint.pk,
            event_id=row["pk"],
            event_type=row["type"],
            ordering_key=ordering_key(row["type"], row["payload"] or {}),
            created_at=now,
            event_at=row["created_at"],
            next_attempt_at=now,
        )
        for endpoint in endpoints
        for row in by_org[endpoint.organization_id]
        if row["sequence"] > endpoint.after_sequence and endpoint.wants(row["type"])
    ]
    WebhookDelivery.objects.bulk_create(deliveries, batch_size=1000)
    return len(deliveries)


def kick(*, endpoint_ids: Iterable[int] | None = None, now: datetime | None = None) -> list[int]:
    """Queue a delivery pass (task ``deliver_webhooks``, queue ``webhooks``) for each active endpoint with
    a due delivery and no pass running or queued; returns their ids. A queued pass that never started
    (QUEUED_GRACE_SECONDS) is queued again. Tasks are queued once the current transaction commits."""
    now = now or timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    not_queued = Q(queued_at__isnull=True) | Q(queued_at__lt=now - timedelta(seconds=QUEUED_GRACE_SECONDS))
    due = WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now)
    candidates = WebhookEndpoint.objects.filter(free, not_queued, active=True)
    if endpoint_ids is not None:
        candidates = candidates.filter(pk__in=list(endpoint_ids))
    wanted = set(due.filter(endpoint__in=candidates).values_list("endpoint_id", flat=True).distinct())
    kicked = [
        pk
        for pk in sorted(wanted)
        if WebhookEndpoint.objects.filter(free, not_queued, pk=pk, active=True).update(queued_at=now)
    ]
    if kicked:
        transaction.on_commit(lambda: _enqueue(kicked))
    return kicked


def _enqueue(endpoint_ids: list[int]) -> None:
    from provisioner.services.tasks import deliver_webhooks

    for pk in endpoint_ids:
        deliver_webhooks.enqueue(pk)


def pump() -> dict[str, int]:
    """The scheduler's share: dispatch new events, then queue passes for endpoints with due deliveries."""
    dispatched = dispatch()
    return {"webhook_deliveries": dispatched, "webhook_passes": len(kick())}


# --- delivering ------------------------------------------------------------------------------------


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: the first retry's delay, doubled at
    each failure, at most NEOCLOUD_WEBHOOK_RETRY_MAX_SECONDS."""
    first = settings.NEOCLOUD_WEBHOOK_RETRY_SECONDS
    return float(min(first * 2 ** max(0, attempts - 1), settings.NEOCLOUD_WEBHOOK_RETRY_MAX_SECONDS))


# The table's name comes from the model, not from input.
_RECORD_DELIVERED = (
    f"UPDATE {WebhookDelivery._meta.db_table} SET state = %s, attempts = %s, finished_at = %s, "  # noqa: S608
    "lag_seconds = %s, last_status_code = %s, last_error = %s, last_latency_ms = %s WHERE id = %s"
)


class _Pass:
    """One delivery pass over one endpoint (holding its lease)."""

    def __init__(self, endpoint: WebhookEndpoint, deadline: float) -> None:
        self.endpoint = endpoint
        self.secret = endpoint.secret
        self.org_slug = endpoint.organization.slug
        self.deadline = deadline
        # urllib3 (what requests is built on) directly: a fifth of the cost per POST, no proxy variables; one
        # connection pool to the checked address of the endpoint's host (see resolve), made on first use
        self.pool: urllib3.HTTPConnectionPool | None = None
        self.counts: Counter[str] = Counter()
        self.timeout = settings.NEOCLOUD_WEBHOOK_TIMEOUT_SECONDS
        # Successes answered but not yet written (written together: one transaction per FLUSH_EVERY)
        self.delivered: list[tuple[WebhookDelivery, WebhookAttempt]] = []
        self.flushed_at = time.monotonic()

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                attempted, stop = self._round()
                self.flush()  # before the next round reads what is pending
                if stop or not attempted:
                    return
        finally:
            self.flush()

    def flush(self) -> None:
        """Write the successes answered since the last flush: their attempts and their deliveries' new
        state. A crash before this sends them again (at least once), never loses them."""
        if not self.delivered:
            return
        ops = connection.ops
        rows = [
            (
                delivery.state,
                delivery.attempts,
                ops.adapt_datetimefield_value(delivery.finished_at),
                delivery.lag_seconds,
                delivery.last_status_code,
                delivery.last_error,
                delivery.last_latency_ms,
                delivery.pk,
            )
            for delivery, _ in self.delivered
        ]
        with transaction.atomic():
            WebhookAttempt.objects.bulk_create([attempt for _, attempt in self.delivered])
            # one statement run per row: bulk_update's CASE over every row costs more than the sending
            with connection.cursor() as cursor:
                cursor.executemany(_RECORD_DELIVERED, rows)
        self.delivered = []
        self.flushed_at = time.monotonic()

    def _round(self) -> tuple[int, bool]:
        """One walk over the endpoint's pending deliveries, oldest first. Returns how many it attempted,
        and whether the pass must end (the endpoint does not answer, or time is up)."""
        blocked: set[str] = set()
        attempted, after = 0, 0
        while True:
            page = list(
                WebhookDelivery.objects.filter(
                    endpoint_id=self.endpoint.pk, state=WebhookDelivery.State.PENDING, pk__gt=after
                ).order_by("pk")[:PAGE]
            )
            if not page:
                return attempted, False
            bodies = self._events(d.event_id for d in page)
            for delivery in page:
                after = delivery.pk
                key = delivery.ordering_key
                if key and key in blocked:
                    continue  # an earlier delivery of its server is pending: it waits its turn
                if delivery.next_attempt_at > timezone.now():
                    if key:
                        blocked.add(key)
                    continue
                if time.monotonic() >= self.deadline:
                    return attempted, True
                event = bodies.get(delivery.event_id) if delivery.event_id else None
                event_id = str(event["sequence"]) if event is not None else f"test-{delivery.pk}"
                outcome = self._attempt(delivery, event_id, body_of(delivery, event, self.org_slug))
                attempted += 1
                self.counts[outcome] += 1
                if outcome == WebhookAttempt.Outcome.SUCCEEDED:
                    continue
                if key:
                    blocked.add(key)
                if outcome in (WebhookAttempt.Outcome.TIMEOUT, WebhookAttempt.Outcome.UNREACHABLE):
                    self._put_off(delivery.next_attempt_at)
                    return attempted, True

    def _events(self, ids: Iterable[int | None]) -> dict[int, dict[str, Any]]:
        wanted = {i for i in ids if i is not None}
        return {
            row["pk"]: row
            for row in Event.objects.filter(pk__in=wanted).values(
                "pk", "sequence", "type", "version", "created_at", "payload"
            )
        }

    def _attempt(self, delivery: WebhookDelivery, event_id: str, body: bytes) -> str:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(self.secret, timestamp, body),
            "Neocloud-Event-Id": event_id,
            "Neocloud-Event-Type": delivery.event_type,
            "Neocloud-Delivery-Id": str(delivery.pk),
        }
        status: int | None = None
        error = ""
        started = time.perf_counter()
        try:
            pool, target, host_header = self._pool()
            headers["Host"] = host_header
            answer = pool.urlopen(
                "POST",
                target,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=min(self.timeout, 3.0), read=self.timeout),
                retries=False,
                redirect=False,
                preload_content=False,
            )
            try:
                answer.read(ANSWER_BYTES, decode_content=False)  # the body is not used
            finally:
                if answer.closed or answer.length_remaining == 0:
                    answer.release_conn()  # read to its end: the connection serves the next one
                else:
                    answer.close()
            status = answer.status
            if 200 <= status < 300:
                outcome = WebhookAttempt.Outcome.SUCCEEDED
            else:
                outcome = WebhookAttempt.Outcome.HTTP_ERROR
                error = f"answered {status} {answer.reason or ''}".strip()
                if 300 <= status < 400:
                    error += " (redirects are not followed: register the final URL)"
        except Undeliverable as exc:
            outcome = WebhookAttempt.Outcome.UNREACHABLE
            error = f"not sent: {exc}"
        except urllib3.exceptions.NewConnectionError as exc:  # a subclass of the timeout errors: first
            outcome = WebhookAttempt.Outcome.UNREACHABLE
            error = f"could not connect: {str(exc)[:300]}"
        except urllib3.exceptions.TimeoutError:
            outcome = WebhookAttempt.Outcome.TIMEOUT
            error = f"no answer within {self.timeout:g} s"
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            outcome = WebhookAttempt.Outcome.UNREACHABLE
            error = f"could not connect: {type(exc).__name__}: {str(exc)[:300]}"
        latency_ms = (time.perf_counter() - started) * 1000
        self._record(delivery, outcome, status, error, latency_ms)
        return outcome

    def _pool(self) -> tuple[urllib3.HTTPConnectionPool, str, str]:
        """The pool to the endpoint's checked address, the request target, and the Host header."""
        parts = urllib.parse.urlsplit(self.endpoint.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if self.pool is None:
            address = resolve(host, port)
            if parts.scheme == "https":
                self.pool = urllib3.HTTPSConnectionPool(
                    address,
                    port,
                    maxsize=1,
                    server_hostname=host,
                    assert_hostname=host,
                    cert_reqs="CERT_REQUIRED",
                )
            else:
                self.pool = urllib3.HTTPConnectionPool(address, port, maxsize=1)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return self.pool, target, parts.netloc

    def _record(
        self, delivery: WebhookDelivery, outcome: str, status: int | None, error: str, latency_ms: float
    ) -> None:
        now = timezone.now()
        attempts = delivery.attempts + 1
        fields: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": status,
            "last_error": error,
            "last_latency_ms": latency_ms,
        }
        if outcome == WebhookAttempt.Outcome.SUCCEEDED:
            fields.update(
                state=WebhookDelivery.State.SUCCEEDED,
                finished_at=now,
                lag_seconds=max(0.0, (now - delivery.event_at).total_seconds()),
            )
        elif (now - delivery.created_at).total_seconds() >= settings.NEOCLOUD_WEBHOOK_GIVE_UP_SECONDS:
            fields.update(
                state=WebhookDelivery.State.FAILED,
                finished_at=now,
                last_error=f"{error}; given up after {attempts} attempt(s) over a day",
            )
        else:
            fields["next_attempt_at"] = now + timedelta(seconds=backoff(attempts))
        for name, value in fields.items():
            setattr(delivery, name, value)
        attempt = WebhookAttempt(
            delivery=delivery, at=now, outcome=outcome, status_code=status, error=error, latency_ms=latency_ms
        )
        if outcome == WebhookAttempt.Outcome.SUCCEEDED:
            self.delivered.append((delivery, attempt))
            if len(self.delivered) >= FLUSH_EVERY or time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
                self.flush()
            return
        with transaction.atomic():
            attempt.save()
            WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
        self._give_up_expired(now)

    def _give_up_expired(self, now: datetime) -> None:
        """Pending deliveries of this endpoint older than the retry period are given up (recorded)."""
        expired = now - timedelta(seconds=settings.NEOCLOUD_WEBHOOK_GIVE_UP_SECONDS)
        given_up = WebhookDelivery.objects.filter(
            endpoint_id=self.endpoint.pk, state=WebhookDelivery.State.PENDING, created_at__lte=expired
        ).update(
            state=WebhookDelivery.State.FAILED,
            finished_at=now,
            last_error="given up: not delivered within a day (the endpoint kept failing)",
        )
        if given_up:
            log.warning("webhook %s: gave up %d deliveries after a day", self.endpoint.pk, given_up)

    def _put_off(self, until: datetime) -> None:
        """The endpoint does not answer: its other due deliveries wait for the failed one's retry."""
        WebhookDelivery.objects.filter(
            endpoint_id=self.endpoint.pk, state=WebhookDelivery.State.PENDING, next_attempt_at__lt=until
        ).update(next_attempt_at=until)


def deliver_pass(endpoint_id: int, *, seconds: float = PASS_SECONDS) -> dict[str, int]:
    """Send the endpoint's due deliveries, in order, for at most ``seconds``; returns attempts by outcome.
    Does nothing if another pass holds the endpoint or it is inactive. What is left (retries not yet due,
    new deliveries) is queued again by ``kick`` when due."""
    now = timezone.now()
    lease = now + timedelta(seconds=seconds + 2 * settings.NEOCLOUD_WEBHOOK_TIMEOUT_SECONDS + 30)
    claimed = (
        WebhookEndpoint.objects.filter(pk=endpoint_id, active=True)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=lease, queued_at=None)
    )
    if not claimed:
        return {}
    endpoint = WebhookEndpoint.objects.select_related("organization").get(pk=endpoint_id)
    run = _Pass(endpoint, time.monotonic() + seconds)
    try:
        run.run()
    finally:
        if run.pool is not None:
            run.pool.close()
        WebhookEndpoint.objects.filter(pk=endpoint_id, lease_until=lease).update(lease_until=None)
    kick(endpoint_ids=[endpoint_id])  # what came in meanwhile, or what the deadline left
    return dict(run.counts)
