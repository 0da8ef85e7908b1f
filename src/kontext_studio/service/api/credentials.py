"""Content credentials over HTTP: downloads in another format that keep them, and the CA to trust.

``GET /v1/credentials/ca.pem`` hands out the certificate(s) this server's outputs chain to, so anyone can add
them to their C2PA reader's trust list (a public certificate, no account needed).
``GET /v1/convert/{format}/{key}?expires=…&sig=…`` takes the same signed query as the file's own URL (so a
link to a file is also a link to its conversions) and returns the file re-encoded as PNG, JPEG or WebP with
its recipe, its IPTC mark and a C2PA manifest that names the original as its parent.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from kontext_studio.core.errors import KontextError
from kontext_studio.core.provenance.convert import FORMATS, convert_output
from kontext_studio.service.storage.storage_base import Storage


class NoSigningCa(KontextError):
    """No CA certificate to hand out (signing is off, or an organisation's chain came without its CA)."""

    code = "no_signing_ca"
    http_status = 404


MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


def credentials_router(storage: Storage, verify_url: Callable[[str, int, str], None]) -> APIRouter:
    """The conversion route.

    Args:
        storage: where outputs are kept.
        verify_url: checks a file URL's ``expires`` and ``sig`` for a key (raises ``SignatureError``: 403).

    Returns:
        The router to include in the app.
    """
    router = APIRouter(tags=["files"])

    @router.get("/v1/convert/{fmt}/{key:path}", name="convert_file",
                responses={200: {"content": {m: {} for m in sorted(set(MEDIA.values()))}}})
    async def convert_file(fmt: str, key: str, expires: int, sig: str) -> Response:
        """A stored image re-encoded as ``png``, ``jpeg`` or ``webp``, keeping its recipe and signed with
        this installation's content credentials (the original is the manifest's parent)."""
        verify_url(key, expires, sig)
        fmt = fmt.lower()
        if fmt not in FORMATS:
            from kontext_studio.core.errors import InvalidRequest

            raise InvalidRequest(f"format must be png, jpeg or webp; got {fmt!r}", field="format")
        try:
            data = await run_in_threadpool(storage.get, key)  # never block the event loop on storage
        except (FileNotFoundError, IsADirectoryError, ValueError):
            from kontext_studio.service.accounts.accounts_common import NotFound

            raise NotFound(f"file {key} is no longer stored") from None
        converted = await run_in_threadpool(convert_output, data, fmt)
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=600"}
        if converted.note:
            headers["X-Content-Credentials"] = "unsigned"
        return Response(converted.data, media_type=MEDIA[fmt], headers=headers)

    @router.get("/v1/credentials/ca.pem", name="credentials_ca",
                responses={200: {"content": {"application/x-pem-file": {}}}, 404: {"description": "no signer"}})
    def credentials_ca() -> Response:
        """The CA certificate this server's content credentials chain to (PEM), for readers' trust lists."""
        from kontext_studio.core.provenance.credentials import current_content_credentials

        creds = current_content_credentials()
        pem = creds.trust_anchors_pem() if creds is not None else b""
        if not pem:
            raise NoSigningCa("this server does not sign its outputs under a CA certificate it can hand out")
        return Response(pem, media_type="application/x-pem-file",
                        headers={"Content-Disposition": 'attachment; filename="kontext-studio-ca.pem"'})

    return router
