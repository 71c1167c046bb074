"""Consent evidence that cannot name a reader: the network a signup came from, the family of the
program that made it, and the time.

GDPR Art. 7(1) asks the controller to *demonstrate* consent; it does not ask for the reader's
full IP address or raw User-Agent, and both can identify a person (a household's address, a
browser's fingerprint). What is kept instead:

- the network, not the host: IPv4 cut to its /24, IPv6 to its /48 (the site prefix of RFC 6177
  §3 and of RIPE-690 §4.2: many households share it). The same cut as the logs
  (``worker.logs.mask_ip``);
- the user agent's *family* ("Firefox", "Chrome Mobile", "Thunderbird"), read by ``ua-parser``
  (uap-core's maintained rules), "Other" for a program it does not know; never versions, the
  operating system or the device.

Every place that stores an IP address or a user agent goes through :func:`network_of` and
:func:`agent_family`: the signup's and the confirmation's consent evidence, imported consent
rows, stored signup refusals.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from typing import Any

IPV4_PREFIX = 24
IPV6_PREFIX = 48
OTHER_AGENT = "Other"
MAX_AGENT = 512  # the longest User-Agent read; beyond it nothing more is learnt


def network_of(ip: str | None) -> str | None:
    """The network of ``ip`` as stored evidence: ``"203.0.113.7"`` → ``"203.0.113.0/24"``,
    ``"2001:db8:1:2::7"`` → ``"2001:db8:1::/48"``; an IPv4-mapped IPv6 address counts as IPv4.

    ``None`` or blank → ``None``. Text that is no IP address (a proxy's "unknown") is not kept
    either: ``None``, since it could be anything the caller typed. Never raises.
    """
    text = (ip or "").strip()
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        try:  # already a network (a re-import of our own export)
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return None
        address = network.network_address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    # (address, prefix): no text to parse again (the import calls this twice per row)
    return str(ipaddress.ip_network((address, prefix), strict=False))


def agent_family(user_agent: str | None) -> str | None:
    """The family of the program that sent ``user_agent``: ``"Firefox"``, ``"Chrome Mobile"``,
    ``"Thunderbird"``, ``"Other"`` for one uap-core does not know; ``None`` for none or blank.
    At most 100 characters. Never raises."""
    text = (user_agent or "").strip()[:MAX_AGENT]
    if not text:
        return None
    return _family(text)


@lru_cache(maxsize=1024)
def _family(text: str) -> str:
    try:
        parsed = _parser()(text)
    except Exception:  # the rules are data: a bad one must not lose a signup
        return OTHER_AGENT
    family = parsed.family if parsed is not None else None
    return (family or OTHER_AGENT)[:100]


@lru_cache(maxsize=1)
def _parser() -> Any:
    # Imported on first use: compiling uap-core's rules takes a moment, only signups need them.
    from ua_parser import parse_user_agent

    return parse_user_agent


def scrub_payload(payload: Any) -> Any:
    """A signup event as kept with its refusal: its ``ip`` cut to the network and its
    ``user_agent`` to the family (other fields as they are). Text or bytes holding a JSON object
    are read first; anything else is returned as it is (the caller masks IPs in its text)."""
    read = payload
    if isinstance(payload, str | bytes):
        try:
            read = json.loads(payload)
        except (ValueError, RecursionError):
            return payload
    if not isinstance(read, dict):
        return payload
    kept = dict(read)
    if "ip" in kept:
        kept["ip"] = network_of(kept["ip"] if isinstance(kept["ip"], str) else None)
    if "user_agent" in kept:
        agent = kept["user_agent"]
        kept["user_agent"] = agent_family(agent if isinstance(agent, str) else None)
    return kept
