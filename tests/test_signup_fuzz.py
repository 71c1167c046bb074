"""Property: thousands of generated signup events (garbage, huge, unicode, CR/LF injection, wrong
types) never crash the signup actor, every one is either recorded as consent or refused with a
reason, and no address, IP or domain gets more confirmation mails than the limits allow."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.samples import SAMPLE_EDITION
from tests.services import DATA_KEY_ENV
from worker import actors
from worker.broker import current
from worker.db import dispose_engines
from worker.devtools.outbox import OutboxServer
from worker.models import Consent, SignupRefusal
from worker.runtime import Runtime
from worker.settings import Settings
from worker.subscriptions.evidence import network_of

PER_IP_PER_HOUR = 4
PER_ADDRESS_PER_DAY = 2
PER_DOMAIN_PER_MINUTE = 6
POOL = [  # few addresses, so that the limits are hit again and again
    "anna@example.org", "ANNA@Example.org", "ivan@example.org", "olga@example.com",
    "chytach@прыклад.бел", "читатель@пример.рф", "x@gmail.com", "y@gmail.com", "z@gmail.com",
    "w@gmail.com", "v@gmail.com", "u@gmail.com", "t@gmail.com", "reader@example.org.", "broken@",
]  # fmt: skip
IPS = ["203.0.113.1", "203.0.113.2", "2001:db8::1"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
huge = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["a", "я", "\r\n", "\x00", "%0d%0a"]),
    st.integers(0, 70_000),
)
injection = st.sampled_from(
    [
        "x@example.org\r\nBcc: victim@example.net",
        "UA\r\nX-Injected: 1",
        "line\nbreak",
        "nul\x00byte",
        "\u2028sep",
    ]
)
anything = json_values | huge | injection | st.text()


@st.composite
def good_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "version": 1,
        "event_id": draw(st.uuids().map(str) | st.sampled_from(["dup-1", "dup-2"])),
        "email": draw(st.sampled_from(POOL)),
        "language": draw(st.sampled_from(["en", "be", "ru", "be-BY", "ru_RU", "de"])),
    }
    optional = {
        "ip": st.sampled_from(IPS),
        "user_agent": st.sampled_from(["Mozilla/5.0", "curl/8.0", "Бот/1.0"]),
        "source": st.sampled_from(["footer", "popup"]),
        "consent_version": st.sampled_from(["v1", "2026-01"]),
        "occurred_at": st.sampled_from(["2026-11-29T09:00:00Z", "2026-11-29T12:00:00+03:00"]),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            event[name] = draw(values)
    return event


@st.composite
def signup_events(draw: st.DrawFn) -> Any:
    kind = draw(
        st.sampled_from(["good", "good", "good", "mutated", "mutated", "garbage", "json_string"])
    )
    if kind == "garbage":
        return draw(anything)
    event = draw(good_events())
    if kind == "json_string":
        return json.dumps(event)
    if kind == "mutated":
        field = draw(st.sampled_from([*event, "version", "newsletter", "extra"]))
        action = draw(st.sampled_from(["replace", "replace", "delete"]))
        if action == "delete":
            event.pop(field, None)
        else:
            event[field] = draw(anything)
    return event


@pytest.fixture(scope="module")
def fuzz_rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, OutboxServer]]:
    import redis

    from tests.services import redis_url
    from worker.db import make_engine
    from worker.models import Base

    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    client = redis.Redis.from_url(redis_url())
    client.flushdb()
    with OutboxServer(tmp_path_factory.mktemp("outbox")) as smtp:
        rt = Runtime(
            Settings.from_env(
                DATA_KEY_ENV,
                database_url=url,
                redis_url=redis_url(),
                broker="stub",
                smtp_url=smtp.url,
                secret_key="test-secret-key-0123456789",
                public_url="http://testserver",
                newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
                signups_per_ip_per_hour=PER_IP_PER_HOUR,
                confirmations_per_address_per_day=PER_ADDRESS_PER_DAY,
                confirmations_per_domain_per_minute=PER_DOMAIN_PER_MINUTE,
                confirmation_resend_minutes=60,
                stored_refusals_per_hour=0,  # every refusal stored: the invariant below counts
                stored_refusals_per_source_per_hour=0,
            )
        )
        actors.use_runtime(rt)
        current().flush_all()
        yield rt, smtp
        current().flush_all()
        actors.use_runtime(None)
    client.flushdb()
    dispose_engines()


def recorded(rt: Runtime) -> int:
    with rt.session() as session:
        consents = session.scalar(select(func.count()).select_from(Consent)) or 0
        refusals = session.scalar(select(func.count()).select_from(SignupRefusal)) or 0
        return consents + refusals


def known_event_ids(rt: Runtime) -> set[str]:
    with rt.session() as session:
        return set(session.scalars(select(Consent.event_id)))


def send_queued_confirmations() -> None:
    queue = current().queues["transactional"]
    while not queue.empty():
        message = dramatiq.Message.decode(queue.get_nowait())
        queue.task_done()
        actors.send_confirmation(*message.args)  # domain-paced ones go to the delay queue


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)
@given(events=st.lists(signup_events(), min_size=4, max_size=10))
def test_generated_signup_events(fuzz_rt: tuple[Runtime, OutboxServer], events: list[Any]) -> None:
    rt, smtp = fuzz_rt
    ids, before, fresh = known_event_ids(rt), recorded(rt), 0
    for event in events:
        actors.handle_signup(event)  # must not raise, whatever the input
        COUNT[0] += 1
        decoded = _decoded(event)
        event_id = decoded.get("event_id") if isinstance(decoded, dict) else None
        if not (isinstance(event_id, str) and event_id in ids):
            fresh += 1  # not a repeat of an accepted event: it must leave a consent or a refusal
        if isinstance(event_id, str):
            ids.add(event_id)
    assert recorded(rt) - before >= fresh, (
        f"an event was neither recorded nor refused: {events!r:.500}"
    )
    send_queued_confirmations()

    with rt.session() as session:
        assert all(session.scalars(select(SignupRefusal.reason)))  # every refusal has a reason
        accepted_ips = Counter(session.scalars(select(Consent.ip).where(Consent.ip.is_not(None))))
    now = time.monotonic()
    for received in smtp.handler.received[len(SENT) :]:
        SENT.append((now, received.recipients[0].rsplit("@", 1)[1]))
    mails = Counter(r.recipients[0].casefold() for r in smtp.handler.received)
    # Less than an hour passes within the test: the hourly and daily limits hold for the run
    assert all(n <= 1 for n in mails.values()), mails  # the resend window (60 min) < daily limit
    # consent keeps the network (/24, /48), the limit counts each IP: a network's allowance is
    # the limit times the generated IPs in it
    allowance = Counter(network_of(ip) for ip in IPS)
    assert all(n <= PER_IP_PER_HOUR * allowance[net] for net, n in accepted_ips.items()), (
        accepted_ips
    )
    for at, domain in SENT:  # and the per-domain limit in every sliding minute
        in_minute = sum(1 for t, d in SENT if d == domain and at - 60 < t <= at)
        assert in_minute <= PER_DOMAIN_PER_MINUTE, (domain, in_minute)


def _decoded(event: Any) -> Any:
    if isinstance(event, str):
        try:
            return json.loads(event)
        except ValueError:
            return None
    return event


COUNT = [0]  # events fed to the actor in this run
SENT: list[tuple[float, str]] = []  # (when seen, recipient domain) of each confirmation mail


def test_the_run_saw_every_kind_of_outcome(fuzz_rt: tuple[Runtime, OutboxServer]) -> None:
    """Runs after the property test (same module fixture): the generator reached each limit."""
    rt, smtp = fuzz_rt
    with rt.session() as session:
        reasons = set(session.scalars(select(SignupRefusal.reason)))
    assert {"malformed", "invalid_address", "ip_limit", "resend_window"} <= reasons, reasons
    assert len(smtp.handler.received) >= 5
    assert COUNT[0] >= 1000, COUNT  # thousands of events (about 1,400)
