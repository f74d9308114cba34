"""Find a domain's CalDAV server through DNS (RFC 6764 section 3, RFC 2782).

Given `example.com` (from `spec.caldav.domain`), look up the SRV records of
`_caldavs._tcp.example.com` (CalDAV over TLS); only when the connection allows plain HTTP
(`spec.caldav.allowInsecureHTTP`) and that name offers nothing, `_caldav._tcp.example.com` too.
The records are ordered as RFC 2782 says (lowest priority first, weighted random within one
priority) and the first usable one wins. The TXT record at the same name may give the context
path (`path=/dav/`); without one the URL is `/.well-known/caldav` on the target. The URL found
is only a starting point: the caller passes it through the URL guard and CalDAV discovery
(principal, calendar-home-set) as it would a configured URL.

Answers are not trusted: at most `MAX_SRV_RECORDS` SRV records and `MAX_TXT_STRINGS` TXT
strings are read, a target must be a plain host name, a port must not be 0, and a path must be
a short printable absolute path; anything else is skipped. A single target of "." means the
domain says it offers no CalDAV (RFC 2782). A name that does not exist or has no usable record
is a configuration error (`DiscoveryFailed`, not retried); a timeout or a failing nameserver is
retried later (`DiscoveryUnavailable`), and never falls back to plain HTTP.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from calsync.providers.base import InvalidConfiguration, ProviderError

__all__ = [
    "Discovered",
    "DiscoveryFailed",
    "DiscoveryUnavailable",
    "SrvRecord",
    "context_path",
    "discover",
    "normalize_domain",
    "order_srv",
    "parse_nameserver",
    "service_url",
    "usable_target",
]

MAX_SRV_RECORDS: Final = 32
MAX_TXT_STRINGS: Final = 64
MAX_PATH_LENGTH: Final = 255
WELL_KNOWN: Final = "/.well-known/caldav"
SECURE: Final = ("_caldavs._tcp", "https")
PLAIN: Final = ("_caldav._tcp", "http")

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*", re.IGNORECASE)
_PATH = re.compile(r"/[\x21-\x7e]*")


class DiscoveryFailed(InvalidConfiguration):
    """DNS says there is no (usable) CalDAV service for the domain: not retried."""

    reason = "DNSDiscoveryFailed"


class DiscoveryUnavailable(ProviderError):
    """DNS did not answer (timeout, SERVFAIL, no nameserver): retried like a network error."""

    retryable = True
    reason = "DNSDiscoveryFailed"


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # as in the answer, without the final dot; "." when the service is refused


@dataclass(frozen=True, slots=True)
class Discovered:
    """Where DNS discovery led: the URL to start CalDAV discovery from, and why."""

    domain: str
    service: str  # e.g. _caldavs._tcp.example.com
    host: str
    port: int
    url: str
    path_from: Literal["TXT", "well-known"]

    def describe(self) -> str:
        origin = "its TXT path" if self.path_from == "TXT" else WELL_KNOWN
        return f"{self.service} SRV -> {self.host}:{self.port}, {origin}: {self.url}"


def normalize_domain(domain: str) -> str:
    """`Example.COM.` -> `example.com`; ValueError for anything but a DNS name."""
    text = domain.strip().rstrip(".").lower()
    if not _HOST.fullmatch(text):
        raise ValueError(f"{domain!r} is not a DNS domain name")
    return text


def usable_target(target: str) -> str | None:
    """The host name of an SRV target, or None for "." and for names no URL can carry."""
    text = target.rstrip(".").lower()
    if not text or not _HOST.fullmatch(text):
        return None
    return text


def order_srv(records: Iterable[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority, weighted random within a priority; "." dropped.

    Only the first `MAX_SRV_RECORDS` records are considered, and records whose target is no
    usable host name or whose port is 0 are left out.
    """
    rng = rng or random.Random()  # noqa: S311 - load spreading, not security
    usable = [
        r
        for r in list(records)[:MAX_SRV_RECORDS]
        if r.port > 0 and usable_target(r.target) is not None
    ]
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        group = [r for r in usable if r.priority == priority]
        # RFC 2782's running sum, drawn from [0, total) as Go's resolver does: its literal
        # "0 to total inclusive" favours the first record, and gives weight 0 a share.
        while group:
            total = sum(r.weight for r in group)
            if total == 0:  # only weight 0 left: any order
                ordered.append(group.pop(rng.randrange(len(group))))
                continue
            pick = rng.randrange(total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running > pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def refuses_service(records: Sequence[SrvRecord]) -> bool:
    """A single SRV record with target "." : the domain says it offers no such service."""
    return len(records) == 1 and records[0].target.rstrip(".") == ""


def context_path(strings: Iterable[bytes]) -> str | None:
    """The `path=` value of a CalDAV TXT record (RFC 6764 section 4), if usable.

    Each string is one `key=value` (RFC 6763 section 6.3); keys are case-insensitive. A value
    that is not a printable ASCII absolute path of at most `MAX_PATH_LENGTH` characters is
    ignored, as are strings after the first `MAX_TXT_STRINGS`.
    """
    for count, raw in enumerate(strings):
        if count >= MAX_TXT_STRINGS:
            break
        key, sep, value = raw.partition(b"=")
        if not sep or key.strip().lower() != b"path":
            continue
        if len(value) > MAX_PATH_LENGTH:
            continue
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            continue
        if _PATH.fullmatch(text) and "?" not in text and "#" not in text:
            return text
    return None


def service_url(scheme: str, host: str, port: int, path: str) -> str:
    default = 443 if scheme == "https" else 80
    netloc = host if port == default else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}"


def parse_nameserver(text: str) -> tuple[str, int]:
    """`192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53` or `[2001:db8::53]:5353` -> (ip, port)."""
    text = text.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [address]:port")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    else:
        host = text
    address = ipaddress.ip_address(host)  # a nameserver is an address, never a name
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} out of range")
    return str(address), port


def _resolver(nameservers: Sequence[str], lifetime: float) -> dns.asyncresolver.Resolver:
    try:
        resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    except dns.resolver.NoResolverConfiguration as exc:
        raise DiscoveryUnavailable(f"no DNS resolver configured: {exc}") from None
    if nameservers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
        ]
    resolver.lifetime = lifetime
    resolver.timeout = min(lifetime, 2.0)
    return resolver


async def _query(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
) -> dns.resolver.Answer | None:
    """The answer, or None when the name does not exist or holds no such record."""
    try:
        return await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.resolver.LifetimeTimeout:
        raise DiscoveryUnavailable(
            f"DNS lookup of {name} {rdtype} timed out after {resolver.lifetime:g} s"
        ) from None
    except dns.resolver.NoNameservers as exc:
        raise DiscoveryUnavailable(f"DNS lookup of {name} {rdtype} failed: {exc}") from None
    except dns.exception.DNSException as exc:
        raise DiscoveryUnavailable(f"DNS lookup of {name} {rdtype} failed: {exc}") from None


async def discover(
    domain: str,
    *,
    allow_insecure_http: bool,
    nameservers: Sequence[str] = (),
    lifetime: float = 10.0,
    rng: random.Random | None = None,
) -> Discovered:
    """The URL where CalDAV discovery starts for `domain`, found through DNS.

    `lifetime` bounds each lookup (SRV, TXT) with all its retries, in seconds.
    """
    try:
        domain = normalize_domain(domain)
        resolver = _resolver(nameservers, lifetime)
    except ValueError as exc:  # the API and the settings refuse these already
        raise DiscoveryFailed(str(exc)) from None
    services = [SECURE, PLAIN] if allow_insecure_http else [SECURE]
    seen: list[str] = []
    for prefix, scheme in services:
        name = f"{prefix}.{domain}"
        answer = await _query(resolver, name, "SRV")
        records = [
            SrvRecord(
                int(r.priority),
                int(r.weight),
                int(r.port),
                r.target.to_text(omit_final_dot=True),
            )
            for r in (list(answer)[:MAX_SRV_RECORDS] if answer is not None else [])
            if r.rdtype == dns.rdatatype.SRV
        ]
        if not records:
            seen.append(f"{name} has no SRV record")
            continue
        if refuses_service(records):
            seen.append(f"{name} says the service is not offered (target '.')")
            continue
        ordered = order_srv(records, rng)
        if not ordered:
            seen.append(f"{name} has no usable SRV record (bad target or port 0)")
            continue
        best = ordered[0]
        host = usable_target(best.target)
        assert host is not None  # order_srv keeps usable targets only
        txt = await _txt_path(resolver, name)
        path = txt or WELL_KNOWN
        return Discovered(
            domain=domain,
            service=name,
            host=host,
            port=best.port,
            url=service_url(scheme, host, best.port, path),
            path_from="TXT" if txt else "well-known",
        )
    hint = (
        ""
        if allow_insecure_http
        else f" (_caldav._tcp.{domain}, plain HTTP, is looked up only with allowInsecureHTTP)"
    )
    raise DiscoveryFailed(
        f"no CalDAV server found for {domain} through DNS: {'; '.join(seen)}{hint}; "
        "publish the SRV record (RFC 6764) or set spec.caldav.url instead"
    )


async def _txt_path(resolver: dns.asyncresolver.Resolver, name: str) -> str | None:
    try:
        answer = await _query(resolver, name, "TXT")
    except DiscoveryUnavailable:
        return None  # the path is optional: fall back to the well-known URL
    if answer is None:
        return None
    strings = (s for r in answer if r.rdtype == dns.rdatatype.TXT for s in r.strings)
    return context_path(strings)
