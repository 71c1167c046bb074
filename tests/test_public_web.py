"""The public web app attacked from the open internet (issue 13): each test attacks exactly as
the finding did, over real HTTP (the app through TestClient, or a real uvicorn server), with the
real Redis, and checks that the attack now fails and changes nothing."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy import select as sql_select

from tests.samples import SAMPLE_EDITION
from tests.test_feedback import load_world
from tests.test_webhook_routes import MG_AT, SES_AT, _sns_body, runtime_at
from tests.test_webhooks import MG_KEY, TOPIC, SnsSigner, _mg_signed
from worker.devtools.chromium import HeadlessChromium, find_chromium
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.models import FeedbackEvent
from worker.runtime import Runtime
from worker.safety.json_documents import MAX_DEPTH, nesting_depth
from worker.settings import Settings
from worker.web.app import create_app
from worker.web.guards import CONTENT_SECURITY_POLICY
from worker.web.webhooks import WebhookAdapters

PASSWORD = "correct horse battery staple"
SCRAPER_TOKEN = "scraper-token-0123456789abcdef"
DEEP = b"[" * 100_000 + b"]" * 100_000  # RecursionError in json.loads: was an answer 500


def basic(password: str, user: str = "operator") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def web_rt(settings: Settings) -> Iterator[Runtime]:
    """A runtime with every secret of the public app configured, the clock at the Mailgun
    fixtures' time."""
    configured = dataclasses.replace(
        settings,
        operator_password=PASSWORD,
        metrics_token=SCRAPER_TOKEN,
        mailgun_signing_key=MG_KEY,
        ses_topic_arns=TOPIC,
        operator_login_failures_per_peer=3,
        operator_login_failures_total=5,
    )
    runtime = runtime_at(configured, MG_AT)
    yield runtime
    runtime.close()


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread; its base URL. The socket is bound (port 0)
    before the server starts: no port race."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --- Finding 3: /metrics told whether an address subscribes ---------------------------------


def test_metrics_are_served_only_to_the_scraper_with_its_token(web_rt: Runtime) -> None:
    client = TestClient(create_app(web_rt))

    anonymous = client.get("/metrics")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    basic_auth = client.get("/metrics", headers=basic(SCRAPER_TOKEN))
    scraper = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPER_TOKEN}"})

    assert (anonymous.status_code, wrong.status_code, basic_auth.status_code) == (401, 401, 401)
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert "# TYPE" not in anonymous.text + wrong.text + basic_auth.text
    assert scraper.status_code == 200
    assert "# TYPE newsletter_active_send_deliveries gauge" in scraper.text


def test_metrics_without_a_token_configured_are_not_served_at_all(web_rt: Runtime) -> None:
    client = TestClient(create_app(Runtime(dataclasses.replace(web_rt.settings, metrics_token=""))))

    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
        response = client.get("/metrics", headers=headers)
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})


# --- Finding 6: a Mailgun signature replayed with a different event ----------------------------


def feedback_rows(rt: Runtime) -> int:
    with rt.session() as session:
        return int(session.scalar(sql_select(func.count()).select_from(FeedbackEvent)) or 0)


def test_a_mailgun_signature_replayed_with_another_event_is_refused_and_not_recorded(
    web_rt: Runtime, redis_url: str
) -> None:
    with web_rt.session() as session:
        load_world(session)
    client = TestClient(create_app(web_rt))
    genuine = _mg_signed("mailgun_failed_permanent.json")
    first = client.post("/webhooks/mailgun", content=genuine)
    assert first.json() == {"recorded": 1, "duplicates": 0}

    # The attacker keeps the signature block he saw and writes his own event under it
    forged = json.loads(_mg_signed("mailgun_complained.json"))
    forged["signature"] = json.loads(genuine)["signature"]
    replay = client.post("/webhooks/mailgun", content=json.dumps(forged).encode())

    assert (replay.status_code, replay.json()) == (
        403,
        {"error": "Mailgun signature token already used with another body"},
    )
    assert feedback_rows(web_rt) == 1
    # Mailgun's own retry (the same body) is no replay: idempotent, a duplicate
    retry = client.post("/webhooks/mailgun", content=genuine)
    assert retry.json() == {"recorded": 0, "duplicates": 1}
    # The complaint under its own, fresh signature is accepted
    own = client.post("/webhooks/mailgun", content=_mg_signed("mailgun_complained.json"))
    assert own.json() == {"recorded": 1, "duplicates": 0}
    # Remembered in Redis for the accepted window, hashed: no token in clear
    keys = redis.Redis.from_url(redis_url).keys("newsletter:webhook-token:mailgun:*")
    assert len(keys) == 2
    token = json.loads(genuine)["signature"]["token"]
    assert all(token.encode() not in key for key in keys)
    ttl = redis.Redis.from_url(redis_url).ttl(keys[0])
    assert 0 < ttl <= 2 * 600 + 60


# --- Finding 7: memory exhausted by a large POST ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "cap"), [("/signup", 65_536), ("/webhooks/mailgun", 524_288), ("/u/x", 16_384)]
)
def test_a_body_over_the_cap_is_refused_with_413_before_it_is_read(
    web_rt: Runtime, path: str, cap: int
) -> None:
    client = TestClient(create_app(web_rt))

    json = {"Content-Type": "application/json"}  # /signup answers anything else with 415
    declared = client.post(path, content=b"x" * (cap + 1), headers=json)  # Content-Length
    streamed = client.post(
        path, content=iter([b"{" + b" " * 8191] * (cap // 8192 + 1)), headers=json
    )

    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {
            "detail": f"request body too large: at most {cap} bytes on {path}"
        }
    assert client.post(path, content=b"x" * 100, headers=json).status_code != 413


WEB_SERVER = """
import socket, sys, uvicorn
from worker.web.app import create_app
sock = socket.socket(fileno=int(sys.argv[1]))
uvicorn.Server(uvicorn.Config(create_app, factory=True, log_level="warning")).run(sockets=[sock])
"""


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of process ``pid`` in KiB, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def post_chunked(port: int, path: str, total: int, *, declare: bool) -> bytes:
    """POST ``total`` bytes in 1 MiB chunks (chunked, or with Content-Length when ``declare``)
    as a plain socket client, stopping when the server answers or closes; the status line."""
    chunk = b"{" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        length = f"Content-Length: {total}" if declare else "Transfer-Encoding: chunked"
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n"
        conn.sendall(head.encode() + b"\r\n")
        sent = 0
        try:
            while sent < total:
                if select.select([conn], [], [], 0)[0]:
                    break  # the answer came: stop sending
                framed = chunk if declare else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                conn.sendall(framed)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        while b"\r\n" not in answer:
            part = conn.recv(4096)
            if not part:
                break
            answer += part
        return answer.split(b"\r\n", 1)[0]


def test_a_400_mb_post_keeps_the_web_process_memory_bounded(
    settings: Settings, sqlite_url: str, redis_url: str
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "NEWSLETTER_DATABASE_URL": sqlite_url,
        "NEWSLETTER_REDIS_URL": redis_url,
        "NEWSLETTER_BROKER": "stub",
        "NEWSLETTER_SECRET_KEY": "memory-test-secret-0123456789",
        "NEWSLETTER_MAILGUN_SIGNING_KEY": MG_KEY,
        "NEWSLETTER_NEWSLETTER_PATH": settings.newsletter_path,
    }
    server = subprocess.Popen(
        [sys.executable, "-c", WEB_SERVER, str(sock.fileno())], env=env, pass_fds=[sock.fileno()]
    )
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60).text == "ok"
        before = memory_kib(server.pid)
        statuses = [
            post_chunked(port, path, 400 << 20, declare=declare)
            for path in ("/signup", "/webhooks/mailgun")
            for declare in (True, False)
        ]
        after = memory_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        sock.close()
    print(f"web process RSS {before['VmRSS']} KiB before, peak {after['VmHWM']} KiB after 4 POSTs")
    assert statuses == [b"HTTP/1.1 413 Request Entity Too Large"] * 4
    # The 400 MB bodies never entered the process: its peak grew by under 32 MiB
    assert after["VmHWM"] - before["VmRSS"] < 32 * 1024


# --- Finding 12: answers 500 -------------------------------------------------------------------


def test_deeply_nested_json_is_refused_with_a_4xx_on_signup_and_webhooks(web_rt: Runtime) -> None:
    client = TestClient(create_app(web_rt), raise_server_exceptions=False)
    web_rt.signup_languages  # noqa: B018 (the signup route reads them)
    ses_headers = {"x-amz-sns-message-type": "Notification"}

    signup = client.post(
        "/signup",
        content=b"[" * 30_000 + b"]" * 30_000,
        headers={"Content-Type": "application/json"},
    )
    ses = client.post("/webhooks/ses", content=DEEP[:60_000], headers=ses_headers)
    mailgun = client.post("/webhooks/mailgun", content=DEEP[:60_000])

    assert signup.status_code == 400
    assert signup.json()["reason"] == "malformed"
    assert f"nested deeper than {MAX_DEPTH} levels" in signup.json()["detail"]
    for response in (ses, mailgun):
        assert response.status_code == 403
        assert response.json() == {
            "error": f"body is not acceptable JSON: nested deeper than {MAX_DEPTH} levels"
        }


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(b'{"a": "[[[[[[", "b": [1, {"c": "\\"]]]"}]}') == 3
    assert nesting_depth(DEEP) == MAX_DEPTH + 1  # stops counting past the limit


def test_a_non_ascii_mailgun_signature_is_refused_not_a_500(web_rt: Runtime) -> None:
    client = TestClient(create_app(web_rt), raise_server_exceptions=False)
    body = json.loads(_mg_signed("mailgun_failed_permanent.json"))
    body["signature"]["signature"] = "é" * 64

    response = client.post("/webhooks/mailgun", content=json.dumps(body).encode())

    assert (response.status_code, response.json()) == (
        403,
        {"error": "Mailgun signature does not match"},
    )
    assert feedback_rows(web_rt) == 0


@pytest.mark.parametrize("send", [str(2**64), str(2**63), "-1", "0", "9" * 400])
def test_a_dashboard_send_id_out_of_range_is_a_422_not_a_500(web_rt: Runtime, send: str) -> None:
    client = TestClient(create_app(web_rt), raise_server_exceptions=False)

    response = client.get(f"/dashboard?send={send}", headers=basic(PASSWORD))

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "send"]


# --- Hardening: brute force on the dashboard login ----------------------------------------------


def test_dashboard_login_is_limited_per_peer_with_429_and_retry_after(web_rt: Runtime) -> None:
    settings = dataclasses.replace(web_rt.settings, operator_login_failures_total=100)
    app = create_app(Runtime(settings))
    guesser = TestClient(app, client=("203.0.113.7", 50000))
    neighbour = TestClient(app, client=("2001:db8:1:2::99", 50000))
    same_64 = TestClient(app, client=("2001:db8:1:2:aaaa::1", 50000))

    guesses = [guesser.get("/dashboard", headers=basic(f"guess{i}")).status_code for i in range(3)]
    blocked = guesser.get("/dashboard", headers=basic(PASSWORD))  # even the right one, now

    assert guesses == [401, 401, 401]
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["retry-after"]) <= 900
    assert blocked.json()["detail"].startswith("too many failed logins: try again in ")
    # Another peer is not blocked by the guesser
    assert neighbour.get("/dashboard", headers=basic(PASSWORD)).status_code == 200
    # An IPv6 peer counts per /64: rotating addresses inside it does not help
    for i in range(3):
        assert neighbour.get("/dashboard", headers=basic(f"v6-{i}")).status_code == 401
    assert same_64.get("/dashboard", headers=basic(PASSWORD)).status_code == 429


def test_dashboard_login_is_limited_for_the_account_across_peers(web_rt: Runtime) -> None:
    app = create_app(web_rt)
    peers = [TestClient(app, client=(f"198.51.100.{n}", 40000)) for n in range(1, 7)]

    spread = [p.get("/dashboard", headers=basic("guess")).status_code for p in peers[:5]]
    fresh_peer = peers[5].get("/dashboard", headers=basic(PASSWORD))

    assert spread == [401] * 5  # one guess per peer: no per-peer limit reached
    assert fresh_peer.status_code == 429  # but the account's limit (5) is


def test_a_browser_first_request_without_credentials_is_not_counted(web_rt: Runtime) -> None:
    client = TestClient(create_app(web_rt), client=("203.0.113.8", 50000))

    prompts = [client.get("/dashboard").status_code for _ in range(10)]

    assert prompts == [401] * 10
    assert client.get("/dashboard", headers=basic(PASSWORD)).status_code == 200


# --- Hardening: no API description on the public app ---------------------------------------------


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_public_app_publishes_no_api_description(web_rt: Runtime, path: str) -> None:
    public = TestClient(create_app(web_rt)).get(path)
    enabled = TestClient(create_app(Runtime(dataclasses.replace(web_rt.settings, api_docs=True))))

    assert public.status_code == 404
    if path != "/docs/oauth2-redirect":
        assert enabled.get(path).status_code == 200


# --- Hardening: security headers on every page -------------------------------------------------


def test_every_page_sends_csp_referrer_policy_and_nosniff(web_rt: Runtime) -> None:
    with web_rt.session() as session:
        save_edition(session, read_edition(SAMPLE_EDITION), web_rt.clock.now())
    client = TestClient(create_app(web_rt))
    pages = {
        "link error": client.get("/u/forged-token"),
        "confirm error": client.get("/confirm/forged-token"),
        "dashboard": client.get("/dashboard", headers=basic(PASSWORD)),
        "archive": client.get("/archive/2024-W28/en"),
        "login prompt": client.get("/dashboard"),
        "413": client.post("/signup", content=b"x" * 70_000),
    }
    for name, page in pages.items():
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, name
        assert page.headers["referrer-policy"] == "no-referrer", name
        assert page.headers["x-content-type-options"] == "nosniff", name
    assert pages["dashboard"].headers["content-type"].startswith("text/html")
    # No script at all, no third-party origin: default-src 'none', nothing else admits a host
    policy = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'none'" and "script-src" not in policy
    assert not any("http" in sources or "*" in sources for sources in policy.values())


# --- Hardening: no blocking network call inside an async handler -------------------------------


def test_a_slow_sns_certificate_fetch_does_not_stall_healthz(settings: Settings) -> None:
    rt = runtime_at(dataclasses.replace(settings, ses_topic_arns=TOPIC), SES_AT)
    sns = SnsSigner()
    entered, release = threading.Event(), threading.Event()

    def slow_fetch(url: str) -> bytes:
        entered.set()
        release.wait(timeout=60)  # as long as the test keeps it waiting
        return sns.fetch(url)

    app = create_app(rt, WebhookAdapters(fetch_certificate=slow_fetch))
    body = _sns_body(sns, "ses_complaint.json")
    stamp = json.loads(body)["Timestamp"].replace("Z", "+00:00")
    rt.clock.at = datetime.fromisoformat(stamp)  # type: ignore[attr-defined]
    answers: dict[str, Any] = {}
    with served(app) as base:

        def post() -> None:
            headers = {"x-amz-sns-message-type": "Notification"}
            answers["ses"] = httpx.post(f"{base}/webhooks/ses", content=body, headers=headers)

        poster = threading.Thread(target=post)
        poster.start()
        assert entered.wait(timeout=60), "the SES route never fetched the certificate"
        # While the certificate fetch hangs, the process still answers
        try:
            health = httpx.get(f"{base}/healthz", timeout=20)
        finally:
            release.set()
            poster.join(timeout=60)
    assert (health.status_code, health.text) == (200, "ok")
    assert answers["ses"].status_code == 200, answers["ses"].text


def injected_page(tracker: str) -> str:
    """A page as an HTML injection that got past escaping would leave it: an inline script and
    a third-party tracking pixel, beside the page's own inline style."""
    return (
        "<!doctype html><html><head><title>page</title>"
        "<style>main{max-width:34rem}</style></head><body><main>text</main>"
        '<script>document.title = "script ran"</script>'
        f'<img src="{tracker}/pixel.gif" alt=""></body></html>'
    )


def test_an_injected_script_and_a_third_party_image_are_blocked_in_a_real_browser(
    web_rt: Runtime,
) -> None:
    try:
        find_chromium()
    except RuntimeError:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    hits: list[str] = []
    third_party = FastAPI()

    @third_party.get("/pixel.gif")
    def pixel() -> Response:
        hits.append("pixel")
        return Response(b"GIF89a", media_type="image/gif")

    app = create_app(web_rt)
    with served(third_party) as tracker, served(app) as base:
        page = injected_page(tracker)
        app.add_api_route("/injected", lambda: HTMLResponse(page), methods=["GET"])
        with HeadlessChromium(offline=False) as browser:
            browser.call("Page.navigate", {"url": f"{base}/injected"}, session=True)
            browser.wait_for("Page.loadEventFired")
            expression = (
                '({title: document.title, width: getComputedStyle(document.querySelector("main"))'
                ".maxWidth})"
            )
            result = browser.call(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True},
                session=True,
            )["result"]["value"]

    assert result == {"title": "page", "width": "544px"}  # no script ran; 34rem of style applies
    assert hits == []  # the browser never asked the third party for anything
