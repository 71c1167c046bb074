"""Mails that do not watch their readers: no open pixel, no per-reader link, and `edition check`
warns about every resource a mail client would fetch from a third party's host; the edition's
own images can be served by the web app instead."""

from __future__ import annotations

import email
import email.policy
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.message_parts import body_text
from tests.samples import SAMPLE_EDITION
from tests.sendkit import ScriptedRelay, run_batch, seed, start_send
from worker.cli.edition import edition
from worker.cli.edition_live import load
from worker.editions.files import check_edition, read_edition
from worker.editions.rendering import render_edition
from worker.editions.resources import foreign_resource_warnings, remote_resources
from worker.runtime import Runtime
from worker.settings import Settings
from worker.web.app import create_app


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"] or "")
        if tag == "img":
            self.images.append(values.get("src") or "")


def links_of(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    return parser


def test_a_sent_edition_has_no_pixel_and_no_per_reader_link(rt: Runtime) -> None:
    # Given the sample edition sent to two readers
    seed(rt, ["anna@example.org", "boris@example.net"])
    relay = ScriptedRelay()
    run_batch(rt, start_send(rt), mailer=relay)
    source = read_edition(SAMPLE_EDITION).contents["en"]
    articles = {item.url for item in source.items}
    pictures = [item.image.url for item in source.items if item.image is not None]

    # When their HTML parts are read
    found = []
    for _, _, raw in relay.sent:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        found.append(links_of(body_text(message, "html")))

    # Then the only images are the articles' own (no open pixel), every link but the reader's
    # own unsubscribe and preferences links is the same for both and carries no parameter
    assert len(found) == 2
    for links in found:
        assert links.images == pictures
        per_reader = [
            h for h in links.hrefs if h.startswith(("http://testserver/u/", "http://testserver/p/"))
        ]
        shared = [h for h in links.hrefs if h not in per_reader]
        assert len(per_reader) == 2  # unsubscribe and preferences: the reader's own business
        assert articles <= set(shared)
        assert set(shared) - articles <= {
            "https://example.org",
            "http://testserver/archive/2024-W28/en",
        }
        assert all("?" not in h and "#" not in h for h in shared)
    assert [h for h in found[0].hrefs if h not in found[0].hrefs[-2:]] == [
        h for h in found[1].hrefs if h not in found[1].hrefs[-2:]
    ]


FOREIGN = """<html><head><link rel="stylesheet" href="https://fonts.tracker.example/css">
<style>@import "https://cdn.tracker.example/a.css";
td { background: url('https://cdn.tracker.example/bg.png') }</style>
</head><body><table background="https://cdn.tracker.example/t.gif">
<img src="https://example.org/media/a.jpg"
 srcset="https://img.example.org/a.jpg 1x, https://pixel.example.com/p.gif 2x">
<div style="background-image:url(//pixel.example.com/o.gif)"></div>
<img src="cid:logo"><img src="data:image/gif;base64,R0lGOD"><a href="https://elsewhere.example/">read</a>
</table></body></html>"""


def test_every_kind_of_remote_resource_is_found() -> None:
    found = [(r.where, r.host) for r in remote_resources(FOREIGN)]

    assert found == [
        ("link href", "fonts.tracker.example"),
        ("style url()", "cdn.tracker.example"),
        ("style url()", "cdn.tracker.example"),
        ("table background", "cdn.tracker.example"),
        ("img src", "example.org"),
        ("img srcset", "img.example.org"),
        ("img srcset", "pixel.example.com"),
        ("div style url()", "pixel.example.com"),
    ]  # cid:, data: and the <a> link load nothing by themselves


def test_foreign_hosts_are_warned_about_own_hosts_and_their_subdomains_are_not() -> None:
    warnings = foreign_resource_warnings(FOREIGN, ["example.org", "newsletter.example.net"])

    assert [w.split(",")[0] for w in warnings] == [
        "1 resource on fonts.tracker.example",
        "3 resources on cdn.tracker.example",
        "2 resources on pixel.example.com",
    ]
    assert all(w.endswith("tells a third party who opened the mail and when") for w in warnings)


def edition_with_image(tmp_path: Path, url: str) -> Path:
    folder = tmp_path / "2024-W28"
    shutil.copytree(SAMPLE_EDITION, folder)
    for yaml in folder.glob("??.yaml"):
        text = yaml.read_text(encoding="utf-8")
        yaml.write_text(
            text.replace("https://example.org/media/2024/07/border.jpg", url), encoding="utf-8"
        )
    return folder


def test_edition_check_warns_about_an_image_on_a_third_party_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_PUBLIC_URL", "https://news.example.org")
    folder = edition_with_image(tmp_path, "https://images.photostock.example/border.jpg")

    result = CliRunner().invoke(edition, ["check", str(folder)])

    assert result.exit_code == 0  # a warning, not a problem: the operator decides
    assert (
        "en: warning: 1 resource on images.photostock.example, outside the newsletter's own "
        "domains (img src https://images.photostock.example/border.jpg): every remote image "
        "load tells a third party who opened the mail and when"
    ) in result.output
    # Once the host is named as the newsletter's own, the check is quiet
    monkeypatch.setenv("NEWSLETTER_IMAGE_HOSTS", "images.photostock.example")
    quiet = CliRunner().invoke(edition, ["check", str(folder)])
    assert quiet.exit_code == 0 and "warning: 1 resource" not in quiet.output
    # And the sample, whose images are on its own site, passes without one
    sample = CliRunner().invoke(edition, ["check", str(SAMPLE_EDITION)])
    assert "resource" not in sample.output


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"


def test_an_edition_image_is_served_by_the_web_app_and_the_check_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    # Given an edition that keeps its picture in its own folder
    folder = edition_with_image(tmp_path, "border.jpg")
    (folder / "border.jpg").write_bytes(JPEG)
    images = tmp_path / "served"
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "PUBLIC_URL": "https://news.example.org",
        "IMAGES_DIR": str(images),
    }.items():
        monkeypatch.setenv(f"NEWSLETTER_{name}", value)

    # When it is checked and loaded
    checked = CliRunner().invoke(edition, ["check", str(folder)])
    loaded = CliRunner().invoke(load, [str(folder)])

    # Then the check has nothing to say, the mail points at the web app, which serves the copy
    assert checked.exit_code == 0 and "warning: 1 resource" not in checked.output, checked.output
    assert loaded.exit_code == 0, loaded.output
    assert "image served at /images/2024-W28/border.jpg" in loaded.output
    source = read_edition(folder)
    html = render_edition(
        source.newsletter, source.contents["en"], public_url="https://news.example.org"
    ).html
    assert links_of(html).images == ["https://news.example.org/images/2024-W28/border.jpg"]
    client = TestClient(create_app(Runtime(replace(settings, images_dir=str(images)))))
    served = client.get("/images/2024-W28/border.jpg")
    assert (served.status_code, served.content) == (200, JPEG)
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["cache-control"] == "public, max-age=31536000, immutable"
    for probe in ("/images/2024-W28/..%2F..%2Fsecret.jpg", "/images/..%2F2024-W28/border.jpg",
                  "/images/2024-W28/en.yaml", "/images/2024-W29/border.jpg"):  # fmt: skip
        assert client.get(probe).status_code == 404, probe


def test_a_missing_image_file_or_images_dir_is_a_clear_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    folder = edition_with_image(tmp_path, "border.jpg")

    problems = [str(problem) for problem in check_edition(folder)]
    assert problems == [
        f"{file}: items[0].image.url: image file 'border.jpg' is not in the edition folder"
        for file in ("en.yaml:15", "be.yaml:13", "ru.yaml:13")
    ]

    (folder / "border.jpg").write_bytes(JPEG)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", settings.database_url)
    refused = CliRunner().invoke(load, [str(folder)])
    assert refused.exit_code == 1
    assert "set NEWSLETTER_IMAGES_DIR" in refused.output and "nothing stored" in refused.output
