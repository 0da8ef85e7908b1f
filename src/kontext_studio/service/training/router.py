"""``/v1/trainings`` and ``/v1/loras``: submit a LoRA training run with a dataset zip, follow it, cancel it,
and list the LoRAs it made (usable in predictions through the ``loras`` input).

The dataset is unpacked and checked at submit, before anything is queued: a broken dataset answers 422
with the check's report (counts, problems and the files at fault), like ``kontext train-lora check``.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependency aliases defined inside the
# factory from the live annotations.
import asyncio
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.db.base import utcnow
from kontext_studio.service.db.models_training import TrainingRun
from kontext_studio.service.training.archive import extract_dataset
from kontext_studio.service.training.runner import TrainingRunner
from kontext_studio.service.training.runs_sql import TrainingStore, iso

MAX_DATASET_ZIP = 1 << 30  # 1 GiB: a few hundred 1 MP pairs as JPEG
_CHUNK = 1 << 20


class DatasetRejected(InvalidRequest):
    """The dataset has problems; the detail is the check's report (counts, problems, files at fault)."""

    code = "invalid_dataset"


class TrainingUnavailable(KontextError):
    """This server has no runner for training jobs."""

    code = "training_unavailable"


def training_router(store: TrainingStore, runner: TrainingRunner | None, storage: Any,
                    user: Callable[..., Any], file_url_for: Callable[[Request, str], str],
                    max_zip: int = MAX_DATASET_ZIP, unavailable: str | None = None) -> APIRouter:
    """The training API.

    Args:
        store: runs and LoRAs.
        runner: woken when a run is queued (``None``: runs wait for another process's runner).
        storage: where the dataset zips go.
        user: the service's current-user dependency.
        file_url_for: a signed URL of a stored file, for validation sheets.
        max_zip: upload cap in bytes (413 above it).
        unavailable: why this server cannot run training (new runs are then refused with 503 and this reason,
            instead of waiting in a queue nothing reads).
    """
    router = APIRouter(tags=["training"])
    CurrentUser = Annotated[Any, Depends(user)]

    def envelope(request: Request, run: TrainingRun) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/")
        lora = store.lora_of_run(run.id) if run.status == "succeeded" else None
        eta = None
        if run.status == "running" and run.started_at and run.step:
            # The average pace since the run started (optimistic just after a resume: started_at is reset).
            elapsed = (utcnow() - run.started_at).total_seconds()
            eta = round(elapsed / run.step * (run.total_steps - run.step), 1)
        return {
            "id": run.id, "name": run.name, "status": run.status, "step": run.step, "total_steps": run.total_steps,
            "progress": run.progress, "eta_seconds": eta, "loss": run.loss, "pairs": run.pairs,
            "data_hash": run.data_hash, "config": run.config, "error": run.error,
            "validations": [{k: v for k, v in val.items() if k != "image_key"}
                            | {"image": file_url_for(request, val["image_key"])} for val in run.validations or []],
            "lora": {"id": lora.id, "name": lora.name, "rank": lora.rank, "alpha": lora.alpha} if lora else None,
            "created_at": iso(run.created_at), "started_at": iso(run.started_at),
            "completed_at": iso(run.completed_at),
            "urls": {"get": f"{base}/v1/trainings/{run.id}", "cancel": f"{base}/v1/trainings/{run.id}/cancel"},
        }

    async def read_upload(upload: UploadFile) -> bytes:
        chunks, size = [], 0
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            if size > max_zip:
                err = InvalidRequest(f"dataset: the zip is over {max_zip // 2**20} MB", field="dataset")
                err.http_status = 413  # type: ignore[attr-defined]
                raise err
            chunks.append(chunk)
        return b"".join(chunks)

    def submit(user_id: int, name: str, config_text: str, data: bytes, skip_bad_pairs: bool,
               min_side: int) -> str:
        if unavailable:
            err = TrainingUnavailable(unavailable)
            err.http_status = 503  # type: ignore[attr-defined]
            raise err
        from kontext_studio.training.config import TrainConfig
        from kontext_studio.training.dataset import check_dataset

        try:
            raw = json.loads(config_text or "{}")
        except ValueError as exc:
            raise InvalidRequest(f"config: not JSON ({exc})", field="config") from None
        if not isinstance(raw, dict):
            raise InvalidRequest("config: give a JSON object of hyper-parameters", field="config")
        config = TrainConfig.from_dict(raw)
        if not 16 <= min_side <= 4096:
            raise InvalidRequest(f"min_side must be between 16 and 4096; got {min_side}", field="min_side")
        with tempfile.TemporaryDirectory() as tmp:
            root = extract_dataset(data, Path(tmp))
            report = check_dataset(root, default_instruction=config.default_instruction, min_side=min_side)
            if not report.usable or (report.errors and not skip_bad_pairs):
                lines = report.summary().splitlines()[1:]
                raise DatasetRejected(
                    f"dataset: {report.pairs_found} pair(s) found, {len(report.usable)} usable, {report.errors} "
                    f"error(s), {report.warnings} warning(s). " + " ".join(lines) + " Fix the pairs, or send "
                    "skip_bad_pairs=true to train on the usable ones.", field="dataset")
        digest = hashlib.sha256(data).hexdigest()
        key = f"training/datasets/{digest}.zip"
        if not storage.exists(key):
            storage.put(key, data)
        stored = config.as_dict() | {"min_side": min_side}
        return store.submit(user_id, name or "lora", stored, key, len(report.usable), report.data_hash())

    @router.post("/v1/trainings", status_code=201)
    async def create_training(request: Request, me: CurrentUser,
                              dataset: Annotated[UploadFile, File(description="Zip of the dataset folder")],
                              name: Annotated[str, Form(max_length=200)] = "lora",
                              config: Annotated[str, Form(description="JSON hyper-parameters")] = "{}",
                              skip_bad_pairs: Annotated[bool, Form()] = False,
                              min_side: Annotated[int, Form()] = 256) -> dict[str, Any]:
        """Queue a training run on a dataset zip (ai-toolkit layout or manifest); 422 with the report when
        the dataset has problems."""
        data = await read_upload(dataset)
        run_id = await asyncio.to_thread(submit, me.id, name, config, data, skip_bad_pairs, min_side)
        if runner is not None:
            runner.wake()
        return envelope(request, await asyncio.to_thread(store.get, me.id, run_id))

    @router.get("/v1/trainings")
    def list_trainings(request: Request, me: CurrentUser, limit: int = 50) -> dict[str, Any]:
        return {"results": [envelope(request, r) for r in store.runs(me.id, max(1, min(100, limit)))]}

    @router.get("/v1/trainings/{run_id}")
    def get_training(request: Request, run_id: str, me: CurrentUser) -> dict[str, Any]:
        return envelope(request, store.get(me.id, run_id))

    @router.post("/v1/trainings/{run_id}/cancel")
    def cancel_training(request: Request, run_id: str, me: CurrentUser) -> dict[str, Any]:
        store.cancel(me.id, run_id)
        return envelope(request, store.get(me.id, run_id))

    @router.get("/v1/loras")
    def list_loras(me: CurrentUser) -> dict[str, Any]:
        """Your LoRAs; use one in a prediction with ``"loras": [{"id": ..., "weight": 0.8}]``."""
        return {"results": [{"id": lo.id, "name": lo.name, "rank": lo.rank, "alpha": lo.alpha, "sha256": lo.sha256,
                             "run_id": lo.run_id, "created_at": iso(lo.created_at)} for lo in store.loras(me.id)]}

    return router
