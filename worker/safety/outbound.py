"""Requests the server makes on someone else's word: only to the public internet.

The feed addresses of ``newsletter.yaml`` are fetched by the web process (the desk's "New
edition"), and an editor's zip upload can replace that file: without a check, a feed address
``http://127.0.0.1:6379/`` or ``http://169.254.169.254/latest/meta-data/`` would make our own
server read its neighbours (server-side request forgery). :func:`public_client` gives an httpx
client whose every TCP connection goes through :class:`PublicOnly`:

- the host name is resolved once, and **every** address it resolves to must be public: not
  loopback, private (RFC 1918, ULA), shared (100.64/10), link-local, multicast, reserved or
  unspecified; an IPv4 address inside an IPv6 one (``::ffff:127.0.0.1``, 6to4, Teredo, NAT64)
  is judged as that IPv4 address;
- the socket is then opened to the address that was checked (the name is not resolved again,
  so a DNS answer that changes between the check and the connection, "DNS rebinding", cannot
  swap it); TLS still verifies the certificate against the host name (httpcore passes the URL's
  host as ``server_hostname``);
- a redirect opens a new connection, so its target is checked the same way.

The operator may allow named hosts anyway (``NEWSLETTER_FEED_ALLOW_HOSTS``: a feed on the
intranet, the tests' loopback server): a host in ``allow_hosts`` (a name or an address literal,
as written in the URL, case-insensitive) is connected to without the address check.

No maintained library does this for synchronous httpx (``advocate`` wraps requests and is
unmaintained since 2020), so it is the small network backend below, over httpcore's own.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(ValueError):
    """A connection refused because ``host`` is, or resolves to, the non-public ``address`` of
    ``kind`` (:func:`address_kind`); the message names them and how to allow the host."""

    def __init__(self, host: str, address: str, kind: str) -> None:
        self.host, self.address, self.kind = host, address, kind
        article = "an" if kind[0] in "aeiou" else "a"
        shown = "" if host == address else f" resolves to {address}, which"
        super().__init__(
            f"{host}{shown} is {article} {kind} address: refused (an operator may allow the "
            "host in NEWSLETTER_FEED_ALLOW_HOSTS)"
        )


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not on the public internet (``"loopback"``, ``"private"``,
    ``"link-local"``, ``"multicast"``, ``"reserved"``, ``"unspecified"``, ``"non-public"``),
    or None when it is a public unicast address. An IPv4 address carried inside an IPv6 one is
    judged as the IPv4 address (source: the IANA special-purpose registries, as Python's
    ``ipaddress`` encodes them)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address.teredo is not None:
            inner = address.teredo[1]
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            return address_kind(inner)
    for kind, yes in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if yes:
            return kind
    return None if address.is_global else "non-public"


def _allowed(host: str, allow_hosts: Collection[str]) -> bool:
    return host.strip("[]").lower().rstrip(".") in allow_hosts


def normal_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """The host names or address literals ``hosts``, lower case, without brackets or a final
    dot: ``["Feeds.Example.org.", "[::1]"]`` -> ``{"feeds.example.org", "::1"}``."""
    return frozenset(
        entry.strip().strip("[]").lower().rstrip(".") for entry in hosts if entry.strip()
    )


class PublicOnly(httpcore.SyncBackend):
    """httpcore's network backend, connecting only to public addresses unless the host is in
    ``allow_hosts`` (see the module). Raises :class:`BlockedAddress` before any connection."""

    def __init__(self, allow_hosts: Collection[str] = ()) -> None:
        self.allow_hosts = normal_hosts(allow_hosts)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if _allowed(host, self.allow_hosts):
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        addresses = self.checked(host, port)
        last: Exception | None = None
        for address in addresses:  # pinned: the checked addresses, never a new look-up
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
        assert last is not None  # checked() returns at least one address
        raise last

    def checked(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host``, each one public; raises :class:`BlockedAddress` naming the
        first that is not, ``httpcore.ConnectError`` when the name does not resolve."""
        bare = host.strip("[]")
        try:
            answers = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise httpcore.ConnectError(f"{host} does not resolve ({error})") from None
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in answers:
            address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            kind = address_kind(address)
            if kind is not None:
                raise BlockedAddress(bare, str(address), kind)
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError(f"{host} does not resolve")
        return addresses


def public_client(allow_hosts: Collection[str] = (), **options: Any) -> httpx.Client:
    """An ``httpx.Client`` (``options`` as for it; never a proxy from the environment) whose
    connections go only to public addresses or to ``allow_hosts`` (:class:`PublicOnly`)."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx builds its httpcore pool without a way to pass a network backend: set it on the pool
    # (httpcore.ConnectionPool keeps it as _network_backend and uses it for every new connection).
    transport._pool._network_backend = PublicOnly(allow_hosts)
    return httpx.Client(transport=transport, trust_env=False, **options)
