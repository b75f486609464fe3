"""Outbound connections of the backend: which addresses a download may reach, enforced per socket.

Every HTTP request the backend makes (image downloads for predictions, prewarm and export, Label
Studio's API for retraining, the token refresh) goes through :func:`guarded_session`. Its sockets
are opened by :class:`AddressPolicy`: the host name is resolved **once**, every resolved address is
checked, and the connection goes to a checked address (never to a second resolution, so a name
that changes its answer between check and use - DNS rebinding - cannot slip through).

Rules for one address of a host (first match wins):

1. cloud metadata endpoints (``169.254.169.254``, ``169.254.170.2``, ``fd00:ec2::254``,
   ``100.100.100.200``, ``168.63.129.16``): refused, always;
2. inside a network of ``SAFIRE_ALLOWED_NETWORKS``: allowed;
3. a public (globally routable, unicast) address: allowed;
4. loopback or private (RFC 1918, unique-local) and the host is Label Studio's own (the host of
   ``LABEL_STUDIO_URL``): allowed, so a Label Studio on ``127.0.0.1`` or a compose network works;
5. anything else (loopback, private, link-local, shared, reserved, multicast, unspecified): refused.

A host with several addresses is refused when any of them is refused. Refusals raise
:class:`AddressNotAllowed` before a connection is attempted. The session also ignores proxy
variables and ``.netrc`` (``trust_env=False``: no credentials from the environment are attached
to any request) and keeps no cookies.
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, FrozenSet, Iterable, List, Sequence, Tuple, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as u3connection

__all__ = ["AddressNotAllowed", "AddressPolicy", "METADATA_ADDRESSES", "guarded_session", "parse_networks",
           "resolve"]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

METADATA_ADDRESSES: FrozenSet[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle instance metadata
    "169.254.170.2",    # AWS ECS task metadata / credentials
    "fd00:ec2::254",    # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
    "168.63.129.16",    # Azure WireServer (a public address, so rule 3 alone would let it through)
))


class AddressNotAllowed(Exception):
    """A host resolves to an address downloads may not reach (raised before connecting).

    Deliberately not an ``OSError``: urllib3 and requests neither retry nor re-wrap it.
    """

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(message)


def _plain(ip: IPAddress) -> IPAddress:
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


def resolve(host: str, port: int) -> List[IPAddress]:
    """Every address of ``host`` (an IP literal resolves to itself without DNS).

    Tests replace this function to make names resolve where they need them to.
    """
    h = host.strip("[]")
    try:
        return [ipaddress.ip_address(h.split("%", 1)[0])]
    except ValueError:
        pass
    infos = socket.getaddrinfo(h, port, u3connection.allowed_gai_family(), socket.SOCK_STREAM)
    out: List[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def parse_networks(values: Iterable[str]) -> Tuple[IPNetwork, ...]:
    """``["10.0.0.0/8", "192.168.1.7"]`` -> networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses connections may go to (see the module docstring for the rules).

    Args:
        trusted_hosts: host names (lower case, no port) that may resolve to loopback or private
            addresses: Label Studio's own host.
        allowed_networks: networks any host may resolve into (``SAFIRE_ALLOWED_NETWORKS``).
    """

    trusted_hosts: FrozenSet[str] = frozenset()
    allowed_networks: Tuple[IPNetwork, ...] = field(default_factory=tuple)

    def verdict(self, host: str, ip: IPAddress) -> str:
        """"" when ``host`` may be reached at ``ip``, else why not (a short phrase)."""
        ip = _plain(ip)
        if ip in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return ""
        if ip.is_global and not ip.is_multicast:
            return ""
        trusted = host.strip("[]").lower().rstrip(".") in self.trusted_hosts
        if ip.is_link_local:
            return "a link-local address"
        if ip.is_unspecified:
            return "an unspecified address"
        if ip.is_multicast:
            return "a multicast address"
        if ip.is_loopback:
            return "" if trusted else "a loopback address"
        if ip.is_private and not ip.is_reserved:
            return "" if trusted else "a private address"
        return "a reserved or non-public address"

    def check(self, host: str, port: int) -> List[IPAddress]:
        """The addresses of ``host``, all allowed; raises :class:`AddressNotAllowed` (no connection
        is attempted) or ``socket.gaierror`` (name not resolved)."""
        addrs = resolve(host, port)
        if not addrs:
            raise socket.gaierror(f"{host} has no address")
        for ip in addrs:
            why = self.verdict(host, ip)
            if why:
                raise AddressNotAllowed(
                    host, f"{host!r} resolves to {ip}, {why}: refused (downloads reach public addresses, Label "
                          "Studio's own host, and networks listed in SAFIRE_ALLOWED_NETWORKS)")
        return addrs


class _GuardedConnectionMixin:
    """``_new_conn`` of urllib3 connections, connecting only to addresses the policy allows."""

    _policy: AddressPolicy = AddressPolicy()

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        host, port = self._dns_host, self.port  # type: ignore[attr-defined]
        try:
            addrs = self._policy.check(host, port)
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[attr-defined,arg-type]
        err: Exception = OSError(f"no address of {host} could be reached")
        for ip in addrs:
            try:
                sock = u3connection.create_connection(
                    (str(ip), port), self.timeout,  # type: ignore[attr-defined]
                    source_address=self.source_address,  # type: ignore[attr-defined]
                    socket_options=self.socket_options)  # type: ignore[attr-defined]
            except socket.timeout as e:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from e  # type: ignore
            except OSError as e:
                err = e
                continue
            sys.audit("http.client.connect", self, self.host, port)  # type: ignore[attr-defined]
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {err}")  # type: ignore[arg-type]


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: AddressPolicy, **kw: Any) -> None:
        self._policy = policy
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        policy = self._policy
        conn_http = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"_policy": policy})
        conn_https = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), {"_policy": policy})
        pool_http = type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": conn_http})
        pool_https = type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": conn_https})
        self.poolmanager.pool_classes_by_scheme = {"http": pool_http, "https": pool_https}

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:  # never through a proxy
        raise AddressNotAllowed("proxy", "requests through a proxy are not supported by the guarded session")


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


def guarded_session(policy: AddressPolicy, pool_maxsize: int = 10) -> requests.Session:
    """A ``requests.Session`` whose connections obey ``policy`` (no proxies, no .netrc, no cookies)."""
    s = requests.Session()
    s.trust_env = False
    s.cookies.set_policy(_NoCookies())
    adapter = _GuardedAdapter(policy, pool_maxsize=pool_maxsize)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def host_of(netloc: str) -> str:
    """``"User@Host:8080"`` -> ``"host"``; ``"[::1]:80"`` -> ``"::1"``."""
    h = netloc.rsplit("@", 1)[-1].lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def trusted(hosts: Sequence[str]) -> FrozenSet[str]:
    return frozenset(h.lower().rstrip(".") for h in hosts if h)
