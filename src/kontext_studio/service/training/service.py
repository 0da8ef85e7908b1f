"""LoRA training as a service: submit a run from a dataset zip already on disk (checked before anything is
queued), read, cancel, and list LoRAs. The ``/v1/trainings`` and ``/v1/loras`` routers call it."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.accounts.accounts_base import AccountsBase
from kontext_studio.service.accounts.accounts_common import InsufficientCredits
from kontext_studio.service.db.base import utcnow
from kontext_studio.service.db.models_training import TrainingRun
from kontext_studio.service.storage.storage_base import Storage
from kontext_studio.service.training.archive import extract_dataset
from kontext_studio.service.training.runner import TrainingRunner
from kontext_studio.service.training.runs_sql import TrainingStore, iso

MAX_DATASET_ZIP = 1 << 30  # 1 GiB: a few hundred 1 MP pairs as JPEG


class DatasetRejected(InvalidRequest):
    """The dataset has problems; the detail is the check's report (counts, problems, files at fault)."""

    code = "invalid_dataset"


class TrainingUnavailable(KontextError):
    """This server has no runner for training jobs."""

    code = "training_unavailable"
    http_status = 503


class TrainingService:
    """Training runs and LoRAs.

    Args:
        store: runs and LoRAs.
        runner: woken when a run is queued (None: another process runs them).
        storage: where dataset zips go.
        unavailable: why this server cannot train (new runs are refused with it).
        max_zip: upload cap in bytes.
    """

    def __init__(self, store: TrainingStore, runner: TrainingRunner | None, storage: Storage,
                 unavailable: str | None = None, max_zip: int = MAX_DATASET_ZIP,
                 accounts: AccountsBase | None = None):
        self.store, self.runner, self.storage = store, runner, storage
        self.unavailable, self.max_zip = unavailable, max_zip
        self.accounts = accounts

    def submit(self, user_id: int, name: str, config_text: str, zip_path: Path, skip_bad_pairs: bool,
               min_side: int | None) -> str:
        """Check the dataset and queue a run. Blocking: call it off the event loop.

        Raises:
            TrainingUnavailable: this server does not train.
            InsufficientCredits: the user cannot pay the run's price (checked first; nothing is stored).
            InvalidRequest: bad config or min_side.
            DatasetRejected: the dataset has problems (the check's report is the message).
        """
        if self.unavailable:
            raise TrainingUnavailable(self.unavailable)
        self._check_credits(user_id)
        from kontext_studio.training.config import TrainConfig
        from kontext_studio.training.dataset import check_dataset, min_side_for

        try:
            raw = json.loads(config_text or "{}")
        except ValueError as exc:
            raise InvalidRequest(f"config: not JSON ({exc})", field="config") from None
        if not isinstance(raw, dict):
            raise InvalidRequest("config: give a JSON object of hyper-parameters", field="config")
        config = TrainConfig.from_dict(raw)
        if min_side is None:  # the shortest side follows the training resolution (half of it)
            min_side = min_side_for(config.resolution)
        if not 16 <= min_side <= 4096:
            raise InvalidRequest(f"min_side must be between 16 and 4096; got {min_side}", field="min_side")
        with tempfile.TemporaryDirectory() as tmp:
            root = extract_dataset(zip_path, Path(tmp))
            report = check_dataset(root, default_instruction=config.default_instruction, min_side=min_side)
            if not report.usable or (report.errors and not skip_bad_pairs):
                lines = report.summary().splitlines()[1:]
                raise DatasetRejected(
                    f"dataset: {report.pairs_found} pair(s) found, {len(report.usable)} usable, {report.errors} "
                    f"error(s), {report.warnings} warning(s). " + " ".join(lines) + " Fix the pairs, or send "
                    "skip_bad_pairs=true to train on the usable ones.", field="dataset")
        digest = _sha256_file(zip_path)
        key = f"training/datasets/{digest}.zip"
        if not self.storage.exists(key):
            self.storage.put_file(key, zip_path)
        stored = config.as_dict() | {"min_side": min_side}
        run_id = self.store.submit(user_id, name or "lora", stored, key, len(report.usable), report.data_hash())
        if self.runner is not None:
            self.runner.wake()
        return run_id

    def _check_credits(self, user_id: int) -> None:
        """Refuse early a run the user cannot pay for (the hold at queueing is the binding check)."""
        ledger, price = self.store.accounts, self.store.price
        if ledger is None or ledger.free or price <= 0:
            return
        available = ledger.balance(user_id).available
        if available < price:
            raise InsufficientCredits(available=available, required=price)

    def view(self, base: str, run: TrainingRun, file_url: Any) -> dict[str, Any]:
        """A run as the API shows it."""
        lora = self.store.lora_of_run(run.id) if run.status == "succeeded" else None
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
                            | {"image": file_url(base, val["image_key"])} for val in run.validations or []],
            "lora": {"id": lora.id, "name": lora.name, "rank": lora.rank, "alpha": lora.alpha} if lora else None,
            "created_at": iso(run.created_at), "started_at": iso(run.started_at),
            "completed_at": iso(run.completed_at),
            "urls": {"get": f"{base}/v1/trainings/{run.id}", "cancel": f"{base}/v1/trainings/{run.id}/cancel"},
        }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
