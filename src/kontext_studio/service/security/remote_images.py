"""Image URLs in prediction inputs: off unless the operator opts in, and then fetched only through the SSRF guard.

A URL input makes the server issue a request on the client's behalf, which is how internal services and cloud
metadata endpoints get reached. So the fetch goes through ``ssrf.safe_client`` (every hop checked and pinned
to the checked address, redirects included), the body is read with the same cap as an upload and stops at
the cap, and the bytes are sniffed like any upload before anything is stored.
"""

from __future__ import annotations

import socket

import httpx

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.service.security.ssrf import AddressPolicy, Resolver, is_public_address, safe_client
from kontext_studio.service.security.uploads import read_limited_sync


class ImageFetchFailed(InvalidRequest):
    """The image URL could not be fetched (network error or an error status upstream)."""

    code = "image_fetch_failed"


class ImageFetcher:
    """Fetches one image URL for a prediction input.

    Args:
        max_bytes: the largest image accepted (the upload cap).
        allow_http: also accept plain http (default https only).
        policy: which resolved addresses are acceptable (default public unicast only; tests widen it).
        resolver: name resolution (``socket.getaddrinfo`` or a stand-in).
        timeout: seconds for the whole fetch.
    """

    def __init__(self, max_bytes: int, *, allow_http: bool = False, policy: AddressPolicy = is_public_address,
                 resolver: Resolver = socket.getaddrinfo, timeout: float = 15.0):
        self.max_bytes = max_bytes
        self.allow_http = allow_http
        self.policy = policy
        self.resolver = resolver
        self.timeout = timeout

    def __call__(self, url: str, field: str) -> bytes:
        """The bytes at ``url``.

        Raises:
            UnsafeURL: the URL, or any redirect hop, points where the policy forbids (HTTP 422).
            PayloadTooLarge: the body is over ``max_bytes`` (HTTP 413); reading stops at the cap.
            ImageFetchFailed: the server could not be reached or answered with an error (HTTP 422).
        """
        with safe_client(allow_http=self.allow_http, policy=self.policy, resolver=self.resolver,
                         timeout=httpx.Timeout(self.timeout, connect=5.0), follow_redirects=True,
                         headers={"User-Agent": "kontext-studio image fetch", "Accept": "image/*"}) as client:
            try:
                with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise ImageFetchFailed(f"{field}: {url} answered HTTP {resp.status_code}; give a URL that "
                                               "serves the image directly, or upload it", field=field)
                    return read_limited_sync(resp.iter_bytes(), self.max_bytes)
            except httpx.InvalidURL as exc:  # e.g. an octal IPv4 host, which httpx refuses to parse
                raise ImageFetchFailed(f"{field}: {url[:200]!r} is not a valid URL ({exc}); write IP addresses in "
                                       "plain dotted decimal, or upload the image", field=field) from None
            except httpx.HTTPError as exc:
                raise ImageFetchFailed(f"{field}: could not fetch {url} ({type(exc).__name__}); upload the image "
                                       "instead", field=field) from None
