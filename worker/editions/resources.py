"""Remote resources of a rendition: what a mail client fetches on its own when a reader opens it.

Every image, background, style sheet or font a mail loads from a host tells that host who opened
the mail (the reader's IP address, mail client, time). For readers whose reading is prosecuted,
a third party learning that is a risk, so ``edition check`` warns about every resource on a host
outside the newsletter's own domains (its site, its public URL, the configured image hosts).

Found: ``src`` (``img``, ``source``, ``input type=image``, …), ``srcset``, ``poster``,
``background``, ``<link href>`` (style sheets, icons, fonts) and ``url(…)`` in ``style``
attributes and ``<style>`` blocks (CSS Values 4 §4.5; ``@import`` too). Links (``<a href>``)
are not resources: they load only when the reader chooses to follow them. Pure: no network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

# url(x), url('x'), url("x") and @import "x" (CSS Cascade 4 §3).
CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")\s]+)\1\s*\)|@import\s+(['"])([^'"]+)\3""", re.I)
SOURCE_ATTRIBUTES = frozenset({"src", "poster", "background", "data-src", "lowsrc", "dynsrc"})

WHY = "every remote image load tells a third party who opened the mail and when"


@dataclass(frozen=True)
class RemoteResource:
    """One resource a mail client would fetch: ``url`` as written, ``where`` the element and
    attribute (``img src``, ``style url()``), ``host`` its lower-case host name."""

    url: str
    where: str
    host: str


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            if name in SOURCE_ATTRIBUTES:
                self.found.append((value, f"{tag} {name}"))
            elif name in ("srcset", "imagesrcset"):
                for candidate in value.split(","):
                    if candidate.strip():
                        self.found.append((candidate.split()[0], f"{tag} {name}"))
            elif name == "style":
                self.found += [(url, f"{tag} style url()") for url in css_urls(value)]
        if tag == "link" and values.get("href"):
            self.found.append((values["href"], "link href"))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.found += [(url, "style url()") for url in css_urls(data)]


def css_urls(css: str) -> Iterator[str]:
    """The URLs of ``url(…)`` and ``@import`` in ``css``, as written."""
    for match in CSS_URL.finditer(css):
        yield match.group(2) or match.group(4)


def remote_resources(html: str) -> list[RemoteResource]:
    """Every resource of ``html`` loaded from a host (``http(s)://`` or ``//host``), in document
    order; ``cid:``, ``data:`` and relative URLs load nothing from anyone."""
    collector = _Collector()
    collector.feed(html)
    collector.close()
    found = []
    for url, where in collector.found:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() in ("http", "https", "") and parts.hostname:
            found.append(RemoteResource(url.strip(), where, parts.hostname.lower().rstrip(".")))
    return found


def is_own(host: str, own_hosts: Iterable[str]) -> bool:
    """Whether ``host`` is one of ``own_hosts`` or a subdomain of one (``media.example.org``
    under ``example.org``): the newsletter's operator runs those."""
    host = host.lower().rstrip(".")
    for own in own_hosts:
        own = own.lower().rstrip(".")
        if own and (host == own or host.endswith("." + own)):
            return True
    return False


def foreign_resource_warnings(html: str, own_hosts: Iterable[str]) -> list[str]:
    """One warning per foreign host of ``html``'s resources (hosts outside ``own_hosts``):
    ``"2 resources on cdn.tracker.example (img src https://…): every remote image load tells a
    third party who opened the mail and when"``. Empty when every resource is the newsletter's
    own."""
    own = [h for h in own_hosts if h]
    by_host: dict[str, list[RemoteResource]] = {}
    for resource in remote_resources(html):
        if not is_own(resource.host, own):
            by_host.setdefault(resource.host, []).append(resource)
    warnings = []
    for host, resources in by_host.items():
        first = resources[0]
        noun = "resource" if len(resources) == 1 else "resources"
        warnings.append(
            f"{len(resources)} {noun} on {host}, outside the newsletter's own domains "
            f"({first.where} {first.url[:120]}): {WHY}"
        )
    return warnings


def host_of(url: str) -> str:
    """The lower-case host name of ``url``; ``""`` when it has none."""
    return (urlsplit(url.strip()).hostname or "").lower()
