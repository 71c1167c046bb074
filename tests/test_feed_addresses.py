"""Feed addresses cannot make the server read its neighbours (server-side request forgery):
only public addresses are fetched, checked at every connection and redirect, and the connection
goes to the address that was checked (worker/safety/outbound.py, worker/editions/feeds.py)."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpcore
import pytest
from fastapi.testclient import TestClient

from tests.desk_kit import add_user, csrf_of, login
from worker.editions.feeds import edition_from_feeds, fetch_feed
from worker.editions.files import read_newsletter_profile
from worker.editions.store import save_newsletter
from worker.runtime import Runtime
from worker.safety.outbound import PublicOnly, address_kind
from worker.settings import Settings
from worker.web.app import create_app

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
WEEK = (date(2026, 11, 30), date(2026, 12, 6))
JSON_FEED = b'{"version": "https://jsonfeed.org/version/1.1", "items": []}'


class _Neighbour(BaseHTTPRequestHandler):
    """A service on loopback that counts the requests it gets; ``/to?<url>`` redirects there."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to?") :])
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/feed+json")
        self.send_header("Content-Length", str(len(JSON_FEED)))
        self.end_headers()
        self.wfile.write(JSON_FEED)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def neighbour() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Neighbour,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("fd00::5", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),  # reserved for future use; ipaddress files it as private too
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("93.184.215.14", None),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", None),
    ],
)
def test_what_counts_as_public(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_a_loopback_feed_is_refused_before_any_request() -> None:
    with neighbour() as (port, hits):
        with pytest.raises(ValueError) as refused:
            fetch_feed(f"http://127.0.0.1:{port}/feed.json")
        assert str(refused.value) == (
            f"http://127.0.0.1:{port}/feed.json: 127.0.0.1 is a loopback address: refused "
            "(an operator may allow the host in NEWSLETTER_FEED_ALLOW_HOSTS)"
        )
        # 0.0.0.0 reaches loopback on Linux
        with pytest.raises(ValueError, match=r": 0\.0\.0\.0 is an unspecified address: refused"):
            fetch_feed(f"http://0.0.0.0:{port}/feed.json")
        assert hits == []
        # An allowed host is fetched
        body, _ = fetch_feed(f"http://127.0.0.1:{port}/feed.json", allow_hosts=["127.0.0.1"])
        assert body == JSON_FEED and hits == ["/feed.json"]


def test_a_redirect_is_checked_again() -> None:
    # Given an allowed host that redirects to a host that is not allowed (the same service)
    with neighbour() as (port, hits):
        target = f"http://localhost:{port}/secret"
        with pytest.raises(ValueError, match=r"localhost resolves to .* loopback address: refused"):
            fetch_feed(f"http://127.0.0.1:{port}/to?{target}", allow_hosts=["127.0.0.1"])
        # Then the redirect was answered, but its target never reached
        assert hits == [f"/to?{target}"]


def test_every_resolved_address_is_checked_and_the_checked_one_is_connected_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DNS is the boundary that cannot run here: a resolver whose answers we choose.
    answers: list[list[str]] = [["93.184.215.14", "10.0.0.7"]]
    looked_up: list[str] = []
    connected: list[Any] = []

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        looked_up.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in answers.pop(0)
        ]

    def connect(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        connected.append(address)
        raise OSError("no route (test)")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket, "create_connection", connect)
    backend = PublicOnly()
    # One public and one private answer: refused, nothing connected
    with pytest.raises(
        ValueError, match=r"feeds\.example\.org resolves to 10\.0\.0\.7, which is a pri"
    ):
        backend.connect_tcp("feeds.example.org", 443)
    assert connected == []
    # A public answer, then (rebinding) a loopback one: the connection goes to the checked
    # address and the name is not looked up again
    answers[:] = [["93.184.215.14"], ["127.0.0.1"]]
    looked_up.clear()
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("feeds.example.org", 443)
    assert looked_up == ["feeds.example.org"]
    assert connected == [("93.184.215.14", 443)]


def test_the_setting_lists_hosts() -> None:
    settings = Settings.from_env({"NEWSLETTER_FEED_ALLOW_HOSTS": " feeds.intra , 10.0.0.5,"})
    assert settings.feed_hosts == ("feeds.intra", "10.0.0.5")
    assert Settings.from_env({}).feed_hosts == ()


def test_edition_from_feeds_names_each_refused_feed() -> None:
    with neighbour() as (port, hits):
        profile = replace(
            read_newsletter_profile(SAMPLE / "newsletter.yaml"),
            feeds={
                "en": "http://169.254.169.254/latest/meta-data/",
                "be": f"http://127.0.0.1:{port}/feed.json",
            },
        )
        started = edition_from_feeds(profile, *WEEK)
        assert [str(p) for p in started.problems] == [
            "en feed: http://169.254.169.254/latest/meta-data/: 169.254.169.254 is a link-local "
            "address: refused (an operator may allow the host in NEWSLETTER_FEED_ALLOW_HOSTS)",
            f"be feed: http://127.0.0.1:{port}/feed.json: 127.0.0.1 is a loopback address: "
            "refused (an operator may allow the host in NEWSLETTER_FEED_ALLOW_HOSTS)",
            "ru feed: no feed address in newsletter.yaml 'feeds'",
        ]
        assert hits == []


def test_the_desk_refuses_a_feed_on_loopback_unless_allowed(settings: Settings) -> None:
    # Given a runtime whose operator allowed no host, and a profile (as a zip upload could set
    # it) whose feeds point at a service on loopback
    rt = Runtime(replace(settings, feed_allow_hosts=""))
    try:
        with neighbour() as (port, hits):
            profile = replace(
                read_newsletter_profile(SAMPLE / "newsletter.yaml"),
                feeds={lang: f"http://127.0.0.1:{port}/{lang}" for lang in ("en", "be", "ru")},
            )
            with rt.session() as session:
                save_newsletter(session, profile, rt.clock.now())
            add_user(rt, "ales", role="editor")
            client = TestClient(create_app(rt), client=("198.51.100.7", 40000))
            login(client)
            token = csrf_of(client.get("/desk/editions/new").text)
            # When the editor starts the edition from the feeds
            answer = client.post(
                "/desk/editions/new",
                data={
                    "csrf": token,
                    "way": "feeds",
                    "key": "2026-W49",
                    "start": "2026-11-30",
                    "end": "2026-12-06",
                },
            )
            # Then each feed is refused by name, and the service was never asked
            assert answer.status_code == 422
            for lang in ("en", "be", "ru"):
                assert (
                    f"{lang} feed: http://127.0.0.1:{port}/{lang}: 127.0.0.1 is a loopback "
                    "address: refused" in answer.text
                )
            assert hits == []
    finally:
        rt.close()
