"""Guards at the service boundary: upload limits and image sniffing, the SSRF guard, webhook signatures.

Each error carries a stable ``code`` and the ``http_status`` the API answers with (413, 415, 422, 401),
so the problem+json handler can map them without knowing each class.
"""

from kontext_studio.service.security.ssrf import UnsafeURL, check_url, safe_async_client, safe_client
from kontext_studio.service.security.uploads import (
    PayloadTooLarge,
    UnprocessableImage,
    UnsupportedMediaType,
    check_content_length,
    read_limited,
    read_limited_sync,
    sniff_image,
    strip_private_metadata,
)
from kontext_studio.service.security.webhook_signing import WebhookVerificationError

__all__ = [
    "PayloadTooLarge",
    "UnprocessableImage",
    "UnsafeURL",
    "UnsupportedMediaType",
    "WebhookVerificationError",
    "check_content_length",
    "check_url",
    "read_limited",
    "read_limited_sync",
    "safe_async_client",
    "safe_client",
    "sniff_image",
    "strip_private_metadata",
]
