"""SSRF guard for every outgoing request the service makes on a user's behalf (image URLs, webhooks).

``check_url`` refuses URLs that could reach the service's own network: non-https schemes, credentials,
hosts that resolve to loopback, link-local (cloud metadata at 169.254.169.254), private, CGNAT,
multicast, reserved or unspecified addresses, IPv6 loopback/ULA/link-local, and IPv4 addresses hidden in
IPv6 (``::ffff:127.0.0.1``, NAT64, 6to4, Teredo). Every address the name resolves to is checked, not
just the first, since the client may try any of them.

IP literals are parsed here with the same leniency as ``inet_aton`` (``2130706433``, ``0177.0.0.1``,
``0x7f.1``, ``127.1`` all mean 127.0.0.1 to the C resolver), and any spelling other than plain dotted
decimal is refused outright: parsers disagree on them, and that disagreement is the classic bypass.

``safe_client`` / ``safe_async_client`` build httpx clients whose transport runs the check on *every*
request, redirects included (httpx sends each hop through the transport), and pins the connection to
the address it just checked: the request goes to the IP, with the original ``Host`` header and TLS SNI
and certificate verification against the original host name. The name is resolved once per request,
so a DNS-rebinding answer (public for the check, 127.0.0.1 for the connect) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Collection
from typing import Any

import anyio.to_thread
import httpx

from kontext_studio.core.errors import InvalidRequest

__all__ = [
    "Resolver",
    "SSRFGuardAsyncTransport",
    "SSRFGuardTransport",
    "UnsafeURL",
    "check_url",
    "is_public_address",
    "resolve_checked",
    "safe_async_client",
    "safe_client",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]  # socket.getaddrinfo's signature and result
AddressPolicy = Callable[[IPAddress], bool]

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_REDIRECTS = 5
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")  # shared address space: carrier-internal, not public
_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")
_AUTHORITY_END = re.compile(r"[/?#]")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class UnsafeURL(InvalidRequest):
    """The URL could reach something other than a public https server; nothing was fetched."""

    code = "unsafe_url"
    http_status = 422


def _refuse(url: str, why: str, field: str | None) -> UnsafeURL:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return UnsafeURL(f"refused URL {shown!r}: {why}", field=field)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address hands traffic to (mapped, NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address (the only kind we connect to).

    Python's ``is_global`` differs between versions and calls multicast "global", so every flag is
    checked explicitly.

    Args:
        ip: an IPv4 or IPv6 address.

    Returns:
        True for public unicast addresses; False for anything internal, special or ambiguous.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False  # a zone index only makes sense for link-local destinations
        if ip in _NAT64_LOCAL:
            return False
        inner = _embedded_v4(ip)
        if inner is not None and not is_public_address(inner):
            return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
                or not ip.is_global)


def _parse_ipv4_lenient(host: str) -> tuple[ipaddress.IPv4Address, bool] | None:
    """Parse ``host`` the way ``inet_aton`` does; return (address, canonical?) or None if not numeric.

    ``inet_aton`` accepts 1 to 4 parts, each decimal, octal (leading 0) or hex (0x); the last part
    fills the remaining bytes. Only ``a.b.c.d`` in plain decimal without leading zeros is canonical.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER.match(p) for p in parts):
        return None
    values = []
    for p in parts:
        if p[:2].lower() == "0x":
            values.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p.startswith("0"):
            if not all(c in "01234567" for c in p):
                return None  # "08" is not octal: inet_aton fails, so getaddrinfo treats it as a name
            values.append(int(p, 8))
        else:
            values.append(int(p))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    number = (number << (8 * (5 - len(values)))) + last
    canonical = len(parts) == 4 and all(p.isdigit() and p == str(int(p)) for p in parts)
    return ipaddress.IPv4Address(number), canonical


def _literal_address(host: str) -> tuple[IPAddress, bool] | None:
    """(address, canonical?) when ``host`` is an IP literal in any spelling, else None."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host), True
        except ValueError:
            return None
    return _parse_ipv4_lenient(host)


def _split(url: str, allow_http: bool, field: str | None) -> tuple[str, str, int]:
    """Validate the URL's shape and return (scheme, host as sent on the wire, port)."""
    if not isinstance(url, str) or not url:
        raise _refuse(str(url), "a URL string is required", field)
    # Parsers split these differently (a backslash is a path separator to browsers and WHATWG parsers,
    # userinfo to others): refuse rather than guess which host the client will really contact.
    if any(c in url for c in "\\\t\r\n ") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _refuse(url, "the URL contains a backslash, whitespace or a control character", field)
    try:
        # Parse with httpx itself: the host we check is then exactly the host the client connects to.
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _refuse(url, f"not a valid URL ({exc})", field) from None
    scheme = parsed.scheme.lower()
    allowed = ("https", "http") if allow_http else ("https",)
    if scheme not in allowed:
        raise _refuse(url, f"the scheme must be {' or '.join(allowed)}, not {scheme or 'none'}", field)
    authority = _AUTHORITY_END.split(url.split("//", 1)[-1], maxsplit=1)[0]
    if parsed.userinfo or "@" in authority:
        raise _refuse(url, "credentials in URLs are not accepted", field)
    try:
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        raise _refuse(url, "the host name is not valid", field) from None
    if not host:
        raise _refuse(url, "the URL has no host", field)
    port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
    return scheme, host, port


def resolve_checked(url: str, *, allow_http: bool = False, resolver: Resolver = socket.getaddrinfo,
                    allowed_ports: Collection[int] | None = None, policy: AddressPolicy = is_public_address,
                    field: str | None = "url") -> tuple[str, int, list[IPAddress]]:
    """Check ``url`` and return where it may be fetched from.

    Args:
        url: the URL a user gave us.
        allow_http: also accept plain http (off by default: webhooks and image URLs should be https).
        resolver: ``socket.getaddrinfo`` or a stand-in with its signature (tests inject one).
        allowed_ports: if given, the only ports accepted.
        policy: which addresses are acceptable (default: public unicast only). Tests may widen it to
            reach a local server; production code should never pass anything else.
        field: the request field named in the error.

    Returns:
        (host as sent in the Host header and SNI, port, every resolved address, all acceptable).

    Raises:
        UnsafeURL: any rule broken, the name does not resolve, or ANY resolved address is refused.
    """
    _scheme, host, port = _split(url, allow_http, field)
    if allowed_ports is not None and port not in allowed_ports:
        raise _refuse(url, f"port {port} is not allowed", field)
    literal = _literal_address(host.strip("[]"))
    if literal is not None:
        address, canonical = literal
        if not canonical:
            raise _refuse(url, f"the IP address is spelled ambiguously ({host} means {address}); "
                               "write it as plain dotted decimal", field)
        addresses: list[IPAddress] = [address]
    else:
        if host in _LOCAL_NAMES or host.endswith(".localhost"):
            raise _refuse(url, f"{host} is this machine", field)
        try:
            infos = resolver(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise _refuse(url, f"the host {host} does not resolve ({exc})", field) from None
        addresses = []
        for info in infos:
            try:
                addresses.append(ipaddress.ip_address(str(info[4][0])))
            except (ValueError, IndexError, TypeError):
                raise _refuse(url, f"the host {host} resolved to an unusable address {info!r}", field) from None
        if not addresses:
            raise _refuse(url, f"the host {host} resolved to no address", field)
    for address in addresses:
        if not policy(address):
            raise _refuse(url, f"{host} resolves to {address}, which is not a public address", field)
    return host, port, addresses


def check_url(url: str, *, allow_http: bool = False, resolver: Resolver = socket.getaddrinfo,
              allowed_ports: Collection[int] | None = None, field: str | None = "url") -> None:
    """Refuse a URL that is not a public https (or, if allowed, http) address.

    This only vets the URL at the time of the call; fetch through ``safe_client`` so the connection
    goes to the address that was checked (and redirects are checked too).

    Args:
        url: the URL a user gave us (image input or webhook).
        allow_http: also accept plain http.
        resolver: ``socket.getaddrinfo`` or a stand-in with its signature.
        allowed_ports: if given, the only ports accepted.
        field: the request field named in the error.

    Raises:
        UnsafeURL: see ``resolve_checked``.
    """
    resolve_checked(url, allow_http=allow_http, resolver=resolver, allowed_ports=allowed_ports, field=field)


def _pinned(request: httpx.Request, host: str, address: IPAddress) -> httpx.Request:
    """A copy of ``request`` addressed to ``address``; Host header and TLS name stay ``host``.

    A copy, not an in-place edit: httpx resolves relative redirects against the original request's URL,
    which must keep the host name.
    """
    pinned = httpx.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=request.headers,  # already holds Host: <original host[:port]>
        stream=request.stream,
        extensions={**request.extensions, "sni_hostname": host},
    )
    return pinned


class SSRFGuardTransport(httpx.BaseTransport):
    """An httpx transport that checks every request (each redirect hop too) and pins it to the checked IP.

    Args:
        allow_http: also accept plain http.
        resolver: ``socket.getaddrinfo`` or a stand-in.
        allowed_ports: if given, the only ports accepted.
        policy: acceptable addresses (default public unicast only).
        inner: the transport that really sends (default: ``httpx.HTTPTransport`` without keep-alive,
            since pooled connections are keyed by IP and a TLS session verified for one host name must
            not be reused for another name on the same IP).
    """

    def __init__(self, *, allow_http: bool = False, resolver: Resolver = socket.getaddrinfo,
                 allowed_ports: Collection[int] | None = None, policy: AddressPolicy = is_public_address,
                 inner: httpx.BaseTransport | None = None):
        self.allow_http = allow_http
        self.resolver = resolver
        self.allowed_ports = allowed_ports
        self.policy = policy
        self.inner = inner or httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0),
                                                  trust_env=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host, _port, addresses = resolve_checked(
            str(request.url), allow_http=self.allow_http, resolver=self.resolver,
            allowed_ports=self.allowed_ports, policy=self.policy)
        return self.inner.handle_request(_pinned(request, host, addresses[0]))

    def close(self) -> None:
        self.inner.close()


class SSRFGuardAsyncTransport(httpx.AsyncBaseTransport):
    """``SSRFGuardTransport`` for ``httpx.AsyncClient``; name resolution runs in a worker thread."""

    def __init__(self, *, allow_http: bool = False, resolver: Resolver = socket.getaddrinfo,
                 allowed_ports: Collection[int] | None = None, policy: AddressPolicy = is_public_address,
                 inner: httpx.AsyncBaseTransport | None = None):
        self.allow_http = allow_http
        self.resolver = resolver
        self.allowed_ports = allowed_ports
        self.policy = policy
        self.inner = inner or httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0),
                                                       trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        def check() -> tuple[str, int, list[IPAddress]]:
            return resolve_checked(str(request.url), allow_http=self.allow_http, resolver=self.resolver,
                                   allowed_ports=self.allowed_ports, policy=self.policy)

        # getaddrinfo blocks: keep it off the event loop.
        host, _port, addresses = await anyio.to_thread.run_sync(check)
        return await self.inner.handle_async_request(_pinned(request, host, addresses[0]))

    async def aclose(self) -> None:
        await self.inner.aclose()


def safe_client(*, allow_http: bool = False, resolver: Resolver = socket.getaddrinfo,
                allowed_ports: Collection[int] | None = None, policy: AddressPolicy = is_public_address,
                inner: httpx.BaseTransport | None = None, timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                max_redirects: int = MAX_REDIRECTS, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` that can only reach public addresses, on every hop.

    Environment proxies and ``.netrc`` are ignored (``trust_env=False``): a proxy would make the
    checked address meaningless. Read bodies with ``uploads.read_limited_sync(response.iter_bytes(), cap)``
    inside ``client.stream(...)`` so a huge response cannot exhaust memory.

    Args:
        allow_http: also accept plain http.
        resolver: ``socket.getaddrinfo`` or a stand-in.
        allowed_ports: if given, the only ports accepted.
        policy: acceptable addresses (default public unicast only).
        inner: the transport that really sends (tests pass ``httpx.MockTransport``).
        timeout: httpx timeout (default 10 s, 5 s to connect).
        max_redirects: redirect hops followed (each one checked).
        **kwargs: passed to ``httpx.Client`` (headers, follow_redirects, ...).

    Returns:
        The client; use it as a context manager.
    """
    transport = SSRFGuardTransport(allow_http=allow_http, resolver=resolver, allowed_ports=allowed_ports,
                                   policy=policy, inner=inner)
    return httpx.Client(transport=transport, trust_env=False, timeout=timeout, max_redirects=max_redirects,
                        **kwargs)


def safe_async_client(*, allow_http: bool = False, resolver: Resolver = socket.getaddrinfo,
                      allowed_ports: Collection[int] | None = None, policy: AddressPolicy = is_public_address,
                      inner: httpx.AsyncBaseTransport | None = None, timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                      max_redirects: int = MAX_REDIRECTS, **kwargs: Any) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` twin of ``safe_client`` (same arguments and guarantees).

    Returns:
        The client; use it as an async context manager.
    """
    transport = SSRFGuardAsyncTransport(allow_http=allow_http, resolver=resolver, allowed_ports=allowed_ports,
                                        policy=policy, inner=inner)
    return httpx.AsyncClient(transport=transport, trust_env=False, timeout=timeout, max_redirects=max_redirects,
                             **kwargs)
