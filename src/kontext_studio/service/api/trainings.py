"""``/v1/trainings``: submit a LoRA training run with a dataset zip (streamed to disk, checked before
anything is queued), follow it, cancel it."""

# No ``from __future__ import annotations``: FastAPI reads the form annotations at import.
import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.service.api.deps import Svc, User, base_of

router = APIRouter(prefix="/v1", tags=["training"])
_CHUNK = 1 << 20


async def save_upload(upload: UploadFile, dest: Path, max_bytes: int) -> int:
    """Copy an upload to ``dest`` a chunk at a time (memory stays at one chunk), stopping at the cap.

    Raises:
        InvalidRequest: over the cap (HTTP 413).
    """
    size = 0
    with dest.open("wb") as f:
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                err = InvalidRequest(f"dataset: the zip is over {max_bytes // 2**20} MB", field="dataset")
                err.http_status = 413  # type: ignore[attr-defined]
                raise err
            await asyncio.to_thread(f.write, chunk)
    return size


@router.post("/trainings", status_code=201)
async def create_training(request: Request, svc: Svc, me: User,
                          dataset: Annotated[UploadFile, File(description="Zip of the dataset folder")],
                          name: Annotated[str, Form(max_length=200)] = "lora",
                          config: Annotated[str, Form(description="JSON hyper-parameters")] = "{}",
                          skip_bad_pairs: Annotated[bool, Form()] = False,
                          min_side: Annotated[int | None, Form(description="Shortest picture side in pixels "
                                                               "(default: half the config's resolution)")]
                          = None) -> dict[str, Any]:
    """Queue a training run on a dataset zip (ai-toolkit layout or manifest); 422 with the report when
    the dataset has problems."""
    with tempfile.TemporaryDirectory(prefix="kontext-upload-") as tmp:
        path = Path(tmp) / "dataset.zip"
        await save_upload(dataset, path, svc.training.max_zip)
        run_id = await asyncio.to_thread(svc.training.submit, me.id, name, config, path, skip_bad_pairs, min_side)
    run = await asyncio.to_thread(svc.training.store.get, me.id, run_id)
    return await asyncio.to_thread(svc.training.view, base_of(request), run, svc.predictions.file_url)


@router.get("/trainings")
def list_trainings(request: Request, svc: Svc, me: User, limit: int = 50) -> dict[str, Any]:
    return {"results": [svc.training.view(base_of(request), r, svc.predictions.file_url)
                        for r in svc.training.store.runs(me.id, max(1, min(100, limit)))]}


@router.get("/trainings/{run_id}")
def get_training(request: Request, run_id: str, svc: Svc, me: User) -> dict[str, Any]:
    return svc.training.view(base_of(request), svc.training.store.get(me.id, run_id), svc.predictions.file_url)


@router.post("/trainings/{run_id}/cancel")
def cancel_training(request: Request, run_id: str, svc: Svc, me: User) -> dict[str, Any]:
    svc.training.store.cancel(me.id, run_id)
    return svc.training.view(base_of(request), svc.training.store.get(me.id, run_id), svc.predictions.file_url)
