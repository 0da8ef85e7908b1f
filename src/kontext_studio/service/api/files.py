"""``/v1/files``: upload an image (streamed up to the cap, checked and decoded off the event loop), list your
uploads, download through a signed URL."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter, Request, Response

from kontext_studio.service.api.deps import Svc, User, base_of
from kontext_studio.service.security.uploads import check_content_length, read_limited

router = APIRouter(prefix="/v1", tags=["files"])
MAX_UPLOAD = 20 * 2**20
# Checking an upload decodes its header and strips metadata: at most this many run at once, off the event loop.
DECODES_AT_ONCE = 2
_decodes = threading.BoundedSemaphore(DECODES_AT_ONCE)


def bounded(fn: Any, *args: Any) -> Any:
    """Run an image-decoding call with at most ``DECODES_AT_ONCE`` running."""
    with _decodes:
        return fn(*args)


@router.post("/files", status_code=201)
async def upload_file(request: Request, svc: Svc, user: User) -> dict[str, Any]:
    check_content_length(request.headers.get("content-length"), MAX_UPLOAD)
    data = await read_limited(request.stream(), MAX_UPLOAD)  # stops at the cap: 413, nothing stored
    stored = await asyncio.to_thread(bounded, svc.files.upload, user.id, bytes(data))
    return {"id": f"file:{stored.key}", "content_type": stored.content_type, "size": stored.size,
            "urls": {"get": svc.predictions.file_url(base_of(request), stored.key)}}


@router.get("/files")
def list_files(request: Request, svc: Svc, user: User, limit: int = 100) -> dict[str, Any]:
    """Your uploads, newest first: ids usable as ``input_image`` and short-lived download URLs."""
    return {"results": [{"id": f"file:{f.key}", "content_type": f.content_type, "size": f.size,
                         "created_at": f.created_at.isoformat(),
                         "urls": {"get": svc.predictions.file_url(base_of(request), f.key)}}
                        for f in svc.files.list(user.id, limit)]}


@router.get("/files/{key:path}", name="get_file")
def get_file(key: str, expires: int, sig: str, svc: Svc) -> Response:
    data, media = svc.files.read(key, expires, sig)
    return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                      "Cache-Control": "private, max-age=600"})
