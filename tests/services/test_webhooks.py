"""Webhooks against a real HTTP receiver on loopback: deliveries are signed (the receiver checks the HMAC
as a customer would), in order per server, retried after a 500 until answered, given up after the retry
period; a dead endpoint does not hold back another, a slow one times out; only https (or http to
loopback) is accepted; the secret is encrypted at rest and returned once. The last test runs the real
worker and scheduler processes."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from provisioner import events
from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from provisioner.services import webhooks
from provisioner.services.reservations import release_reservation
from tests.conftest import reserve, wait_for
from tests.webhook_receiver import Receiver

# Committed data: on PostgreSQL events are numbered (and so dispatched) only once their transaction ended.
pytestmark = pytest.mark.usefixtures("transactional_db")

OLIVIA = Actor.system("olivia")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def fast_retries(settings):
    settings.NEOCLOUD_WEBHOOK_RETRY_SECONDS = 0.1
    settings.NEOCLOUD_WEBHOOK_RETRY_MAX_SECONDS = 0.4
    settings.NEOCLOUD_WEBHOOK_TIMEOUT_SECONDS = 2.0


def drive(until: Callable[[], bool], timeout: float = 30, message: str = "deliveries") -> None:
    """What the scheduler and the webhooks worker do, in this process: dispatch, then a pass per endpoint."""

    def step() -> bool:
        webhooks.dispatch()
        for pk in WebhookEndpoint.objects.filter(active=True).values_list("pk", flat=True):
            webhooks.deliver_pass(pk, seconds=5)
        return until()

    wait_for(step, timeout=timeout, interval=0.05, message=message)


def churn(inventory) -> None:
    """A reservation and its release: reservation events and several transitions of one server."""
    r = reserve(inventory)
    release_reservation(r, actor=OLIVIA, reason="done")


def settle() -> None:
    """Wait until every committed event is numbered: on a PostgreSQL server shared with other work, a
    transaction older than ours (someone else's) holds numbering, and so dispatching, back until it ends."""
    wait_for(
        lambda: events.sequence_committed() >= 0 and not Event.objects.filter(sequence__isnull=True).exists(),
        timeout=30,
        message="every event numbered",
    )


def acme_events() -> list[Event]:
    settle()
    return list(Event.objects.filter(organization__slug="acme").sequenced())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deliveries_are_signed_complete_and_in_stream_order(inventory, receiver, fast_retries):
    endpoint, secret = webhooks.create_endpoint(inventory.acme, receiver.url, actor=OLIVIA)
    assert secret.startswith("whsec_")
    reserve(inventory, org=inventory.other, user=inventory.outsider, key=inventory.other_key, label="o")
    churn(inventory)
    wanted = acme_events()
    assert len(wanted) >= 4
    drive(lambda: len(receiver.delivered()) >= len(wanted))
    got = receiver.delivered()
    assert len(got) == len(wanted)  # nothing of the other organization's, nothing twice
    assert all(r.signed_with(secret) for r in got)
    assert not got[0].signed_with("whsec_someone-else")
    # one endpoint, no failures: the stream's order
    assert [r.json["id"] for r in got] == [e.sequence for e in wanted]
    first = got[0]
    assert first.headers["Neocloud-Event-Id"] == str(first.json["id"])
    assert first.headers["Content-Type"] == "application/json"
    delivery = WebhookDelivery.objects.get(pk=int(first.headers["Neocloud-Delivery-Id"]))
    assert delivery.endpoint == endpoint and delivery.state == WebhookDelivery.State.SUCCEEDED
    assert delivery.attempts == 1 and delivery.last_status_code == 200 and delivery.lag_seconds is not None
    assert {r.json["organization"] for r in got} == {"acme"}
    body = first.json
    assert set(body) == {"id", "type", "version", "organization", "created_at", "payload"}


def test_a_500_is_retried_with_backoff_and_later_events_of_the_server_wait(inventory, receiver, fast_retries):
    endpoint, secret = webhooks.create_endpoint(
        inventory.acme, receiver.url, actor=OLIVIA, event_types=["node.transition"]
    )
    receiver.fail_next(3)
    churn(inventory)
    transitions = [e for e in acme_events() if e.type == "node.transition"]
    assert len(transitions) >= 2
    drive(lambda: len(receiver.delivered()) >= len(transitions))
    answered = receiver.received
    assert [r.status for r in answered[:3]] == [500, 500, 500]
    # the failed first transition was retried (same event id) and every later transition of that server
    # waited for it: what arrived with a 200 is the server's transitions in their order
    assert {r.json["id"] for r in answered[:3]} == {transitions[0].sequence}
    assert [r.json["id"] for r in receiver.delivered()] == [e.sequence for e in transitions]
    assert all(r.signed_with(secret) for r in answered)
    first = WebhookDelivery.objects.get(endpoint=endpoint, event=transitions[0])
    assert first.state == WebhookDelivery.State.SUCCEEDED and first.attempts == 4
    log = list(first.attempt_log.values_list("outcome", "status_code"))
    assert log == [("http_error", 500)] * 3 + [("succeeded", 200)]
    # exponential: the waits between tries grow (0.1 s, 0.2 s, 0.4 s)
    gaps = [b.at - a.at for a, b in itertools.pairwise(answered[:4])]
    assert gaps[0] >= 0.09 and gaps[2] >= 0.35


def test_a_delivery_failing_for_the_whole_retry_period_is_given_up(
    inventory, receiver, fast_retries, settings
):
    settings.NEOCLOUD_WEBHOOK_GIVE_UP_SECONDS = 1.0
    endpoint, _ = webhooks.create_endpoint(
        inventory.acme, receiver.url, actor=OLIVIA, event_types=["reservation.created"]
    )
    receiver.fail_next(10_000)
    reserve(inventory)
    drive(
        lambda: WebhookDelivery.objects.filter(endpoint=endpoint, state="failed").exists(),
        message="the delivery given up",
    )
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.attempts >= 2 and delivery.finished_at is not None
    assert "given up" in delivery.last_error and delivery.last_status_code == 500
    assert delivery.attempt_log.count() == delivery.attempts


def test_a_dead_endpoint_does_not_hold_back_another(inventory, receiver, fast_retries):
    dead, _ = webhooks.create_endpoint(inventory.acme, f"http://127.0.0.1:{closed_port()}/x", actor=OLIVIA)
    live, secret = webhooks.create_endpoint(inventory.acme, receiver.url, actor=OLIVIA)
    churn(inventory)
    wanted = acme_events()
    started = time.monotonic()
    drive(lambda: len(receiver.delivered()) >= len(wanted))
    assert time.monotonic() - started < 15
    assert all(r.signed_with(secret) for r in receiver.delivered())
    assert not WebhookDelivery.objects.filter(endpoint=live).exclude(state="succeeded").exists()
    pending = WebhookDelivery.objects.filter(endpoint=dead, state="pending")
    assert pending.count() == len(wanted)
    outcomes = set(WebhookAttempt.objects.filter(delivery__endpoint=dead).values_list("outcome", flat=True))
    assert outcomes == {"unreachable"}
    # one try per retry step for the whole endpoint, not one per delivery
    assert WebhookAttempt.objects.filter(delivery__endpoint=dead).count() < len(wanted) + 10
    assert "could not connect" in pending.order_by("pk").first().last_error


def test_a_slow_endpoint_times_out_and_is_retried(inventory, fast_retries, settings):
    settings.NEOCLOUD_WEBHOOK_TIMEOUT_SECONDS = 0.5
    slow = Receiver(delay=2.0).start()
    try:
        endpoint, _ = webhooks.create_endpoint(
            inventory.acme, slow.url, actor=OLIVIA, event_types=["reservation.created"]
        )
        reserve(inventory)
        settle()
        webhooks.dispatch()
        started = time.monotonic()
        counts = webhooks.deliver_pass(endpoint.pk, seconds=5)
        assert time.monotonic() - started < 1.8
        assert counts == {"timeout": 1}
        delivery = WebhookDelivery.objects.get(endpoint=endpoint)
        assert delivery.state == "pending" and delivery.next_attempt_at is not None
        assert "no answer within 0.5 s" in delivery.last_error
    finally:
        slow.stop()


def test_the_test_event_is_signed_and_logged(inventory, receiver, fast_retries):
    endpoint, secret = webhooks.create_endpoint(inventory.acme, receiver.url, actor=OLIVIA)
    delivery = webhooks.send_test(endpoint, actor=OLIVIA)
    drive(lambda: len(receiver.delivered()) == 1)
    got = receiver.delivered()[0]
    assert got.signed_with(secret)
    assert got.json["type"] == "webhook.test" and got.json["id"] is None
    assert got.headers["Neocloud-Event-Id"] == f"test-{delivery.pk}"
    delivery.refresh_from_db()
    assert delivery.state == "succeeded" and delivery.attempt_log.count() == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/neocloud",
        "https://93.184.215.14:8443/x?y=1",
        "http://127.0.0.1:8080/hooks",
        "http://[::1]:9000/",
        "http://localhost/hooks",
    ],
)
def test_https_anywhere_and_http_to_loopback_are_accepted(url):
    assert webhooks.validate_url(url) == url


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://hooks.example.com/x", "http is allowed only to this machine"),
        ("http://10.0.0.5/x", "use https"),
        ("ftp://example.com/x", "no http(s) URL"),
        ("https:///nohost", "no http(s) URL"),
        ("hooks.example.com", "no http(s) URL"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://example.com:99999/", "no valid URL"),
        # a customer's URL must not make the control plane its proxy into the operator's networks
        ("https://10.0.0.5/x", "10.0.0.5 is a private address: deliveries go to public addresses only"),
        ("https://169.254.169.254/latest/meta-data/", "a link-local address (a cloud metadata service"),
        ("https://198.18.0.7/x", "198.18.0.7 is a private address"),  # the lab's servers
        ("https://[fd00::1]/x", "is a private address"),
        ("https://[::ffff:10.1.2.3]/x", "is a private address"),
        ("https://100.64.0.1/x", "is a private address"),  # carrier-grade NAT
        ("https://224.0.0.1/x", "a multicast address"),
        ("https://0.0.0.0/x", "a reserved address"),
    ],
)
def test_other_urls_are_refused_with_a_reason(url, says):
    with pytest.raises(InvalidRequest, match=says.replace("(", r"\(").replace(")", r"\)")):
        webhooks.validate_url(url)


def test_event_types_are_checked_and_filter_deliveries(inventory, receiver, fast_retries):
    with pytest.raises(InvalidRequest, match="unknown event type"):
        webhooks.create_endpoint(inventory.acme, receiver.url, actor=OLIVIA, event_types=["node.moved"])
    webhooks.create_endpoint(inventory.acme, receiver.url, actor=OLIVIA, event_types=["reservation.released"])
    churn(inventory)
    drive(lambda: len(receiver.delivered()) >= 1)
    time.sleep(0.2)
    webhooks.dispatch()
    assert [r.json["type"] for r in receiver.delivered()] == ["reservation.released"]


def test_the_secret_is_encrypted_at_rest_and_never_in_a_repr(inventory):
    endpoint, secret = webhooks.create_endpoint(inventory.acme, "https://hooks.example.com/", actor=OLIVIA)
    row = WebhookEndpoint.objects.get(pk=endpoint.pk)
    assert secret not in row.secret_encrypted and row.secret == secret
    assert secret not in repr(row) and secret not in str(row)


def test_a_new_endpoint_gets_only_what_happens_after_it_is_made(inventory, receiver, fast_retries):
    reserve(inventory)
    settle()
    endpoint, _ = webhooks.create_endpoint(inventory.acme, receiver.url, actor=OLIVIA)
    assert webhooks.dispatch() == 0
    webhooks.send_test(endpoint, actor=OLIVIA)
    drive(lambda: len(receiver.delivered()) == 1)
    assert receiver.delivered()[0].json["type"] == "webhook.test"


@pytest.mark.slow
def test_the_scheduler_and_a_worker_deliver_on_their_own(inventory, receiver, workers):
    _, secret = webhooks.create_endpoint(
        inventory.acme, receiver.url, actor=OLIVIA, event_types=["reservation.created"]
    )
    workers.worker()
    workers.scheduler()
    reserve(inventory)
    wait_for(lambda: receiver.delivered(), timeout=60, message="a delivery", details=workers.logs)
    got = receiver.delivered()[0]
    assert got.json["type"] == "reservation.created" and got.signed_with(secret)


def test_metrics_count_outcomes_and_the_lag_of_each_delivery(inventory, receiver, fast_retries):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from provisioner.metrics import NeocloudCollector

    webhooks.create_endpoint(inventory.acme, receiver.url, actor=OLIVIA, event_types=["reservation.created"])
    webhooks.create_endpoint(
        inventory.acme,
        f"http://127.0.0.1:{closed_port()}/",
        actor=OLIVIA,
        event_types=["reservation.created"],
    )
    receiver.fail_next(1)
    reserve(inventory)
    drive(lambda: len(receiver.delivered()) == 1)
    registry = CollectorRegistry()
    registry.register(NeocloudCollector())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("neocloud_webhook_deliveries_total", (("state", "succeeded"),))] == 1
    assert samples[("neocloud_webhook_deliveries_total", (("state", "failed"),))] == 0
    assert samples[("neocloud_webhook_deliveries_pending", ())] == 1  # the dead endpoint's
    assert samples[("neocloud_webhook_oldest_pending_seconds", ())] > 0
    assert samples[("neocloud_webhook_attempts_total", (("outcome", "http_error"),))] == 1
    assert samples[("neocloud_webhook_attempts_total", (("outcome", "succeeded"),))] == 1
    assert samples[("neocloud_webhook_attempts_total", (("outcome", "unreachable"),))] >= 1
    assert samples[("neocloud_webhook_delivery_lag_seconds_count", ())] == 1
    lag = WebhookDelivery.objects.get(state="succeeded").lag_seconds
    assert samples[("neocloud_webhook_delivery_lag_seconds_sum", ())] == pytest.approx(lag)
    assert samples[("neocloud_webhook_delivery_lag_seconds_bucket", (("le", "+Inf"),))] == 1


def test_a_pass_killed_before_it_recorded_its_answers_sends_them_again(
    inventory, receiver, fast_retries, monkeypatch
):
    """At least once: answered deliveries whose success was not yet written (the worker died) stay
    pending, and the next pass, once the dead pass's lease has run out, sends them again, with the same
    event ids, so that a receiver can skip what it already processed."""
    endpoint, secret = webhooks.create_endpoint(
        inventory.acme, receiver.url, actor=OLIVIA, event_types=["reservation.created"]
    )
    reserve(inventory)
    settle()
    assert webhooks.dispatch() == 1

    def killed(self) -> None:
        raise SystemExit("worker killed")

    monkeypatch.setattr(webhooks._Pass, "flush", killed)
    with pytest.raises(SystemExit):
        webhooks.deliver_pass(endpoint.pk, seconds=5)
    assert len(receiver.delivered()) == 1
    assert WebhookDelivery.objects.get(endpoint=endpoint).state == "pending"
    monkeypatch.undo()
    # a worker killed outright never hands its lease back: it holds the endpoint until it runs out
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(lease_until=timezone.now() + timedelta(minutes=1))
    assert webhooks.deliver_pass(endpoint.pk, seconds=5) == {}
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(lease_until=None)  # it ran out
    assert webhooks.deliver_pass(endpoint.pk, seconds=5) == {"succeeded": 1}
    first, again = receiver.delivered()
    assert first.headers["Neocloud-Event-Id"] == again.headers["Neocloud-Event-Id"]
    assert first.body == again.body and again.signed_with(secret)
    assert WebhookDelivery.objects.get(endpoint=endpoint).state == "succeeded"


def test_loopback_is_refused_unless_allowed(settings):
    settings.NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK = False  # production's default
    for url in ("http://127.0.0.1:8080/hooks", "https://localhost/x", "https://[::1]/"):
        with pytest.raises(InvalidRequest, match="is this machine: deliveries go to public addresses only"):
            webhooks.validate_url(url)


def test_a_name_that_resolves_to_an_inner_address_gets_nothing(inventory, receiver, settings, monkeypatch):
    """A host name is checked where it points at delivery time, and the connection goes to the address
    checked: a name resolving to the operator's network (or loopback, in production) is never connected to."""
    webhook, _ = webhooks.create_endpoint(inventory.acme, "https://hooks.example.com/x", actor=OLIVIA)
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    answers = {"hooks.example.com": "10.20.30.40"}

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", getaddrinfo)
    delivery = webhooks.send_test(webhook, actor=OLIVIA)
    webhooks.deliver_pass(webhook.pk)
    attempt = delivery.attempt_log.get()
    assert attempt.error.startswith("not sent: hooks.example.com resolves to 10.20.30.40, a private address")

    settings.NEOCLOUD_WEBHOOK_ALLOW_LOOPBACK = False
    answers["hooks.example.com"] = "127.0.0.1"  # re-pointed at the control plane itself
    with pytest.raises(webhooks.Undeliverable, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        webhooks.resolve("hooks.example.com", 443)
    assert receiver.delivered() == []


def test_the_receivers_verifier_in_the_docs_accepts_our_signature_and_refuses_a_changed_body():
    """docs/events-and-metrics.md gives receivers a verifier to copy: it must agree with what we send."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "events-and-metrics.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/events-and-metrics.md", "exec"), namespace)  # noqa: S102 - our own docs
    verify = namespace["verify"]
    body = b'{"type":"node.active"}'
    header = webhooks.signature_header("whsec_doc", int(time.time()), body)
    assert verify("whsec_doc", header, body) is True  # type: ignore[operator]
    assert verify("whsec_doc", header, body + b" ") is False  # type: ignore[operator]
    assert verify("whsec_other", header, body) is False  # type: ignore[operator]
    stale = webhooks.signature_header("whsec_doc", int(time.time()) - 3600, body)
    assert verify("whsec_doc", stale, body) is False  # type: ignore[operator]
