"""Runs queued training jobs one at a time in a background thread of the API process.

A run's dataset zip is unpacked into the runner's work folder, checked, and trained with
``LoraTrainer`` on a pipeline loaded for the run (and freed after it). Progress and the last loss are
written at most twice a second; each validation round's contact sheet is stored and listed on the run; a
cancel request is seen within a step and ends the run with a checkpoint. The adapter is stored under
``loras/<id>.safetensors`` and becomes one of the user's LoRAs. Runs left ``running`` by a stopped server
go back to the queue at the next start and resume from their last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kontext_studio.core.errors import KontextError
from kontext_studio.core.lora import file_sha256, read_lora
from kontext_studio.service.background import PollingLoop
from kontext_studio.service.db.base import new_id
from kontext_studio.service.db.models_training import RunStatus, TrainingRun
from kontext_studio.service.storage.files_sql import SqlFiles
from kontext_studio.service.storage.storage_base import Storage
from kontext_studio.service.training.archive import extract_dataset
from kontext_studio.service.training.loras import lora_key
from kontext_studio.service.training.runs_sql import TrainingStore

log = logging.getLogger(__name__)
# (base_precision) -> (FluxKontextPipeline, description for the recipe); fp8 runs load the transformer so that its
# full-precision copy never sits on the GPU.
PipelineFactory = Callable[[str], tuple[Any, str]]
PROGRESS_EVERY = 0.5
CANCEL_EVERY = 0.25


def pipeline_factory_for(editor: Any) -> PipelineFactory:
    """Load a fresh training pipeline from the same weights the editor's local tiers use.

    Raises (when called):
        KontextError: this server has no local diffusers backend (e.g. the fake backend).
    """
    def make(base_precision: str = "model") -> tuple[Any, str]:
        from kontext_studio.core.registry import get_tier
        from kontext_studio.training.trainer import TrainingError, load_pipeline

        backend = editor.backend_for(get_tier("dev"))
        source = getattr(backend, "source", None)
        if source is None:
            raise TrainingError("training needs the local FLUX.1 Kontext [dev] weights (the diffusers backend); "
                                f"this server runs the {getattr(backend, 'name', 'unknown')} backend")
        pipe, described, _res = load_pipeline(source.location, source.base,
                                              device=getattr(backend, "_device_pref", "auto"),
                                              token=getattr(backend, "token", None),
                                              allow_download=bool(getattr(backend, "allow_download", False)),
                                              base_precision=base_precision)
        return pipe, described

    return make


class TrainingRunner(PollingLoop):
    """Background runner of training jobs.

    Args:
        store: runs and LoRAs.
        storage: datasets in, validation sheets and adapters out.
        pipeline_factory: loads the pipeline a run trains on.
        work_dir: unpacked datasets, checkpoints and the shared latent cache.
    """

    def __init__(self, store: TrainingStore, storage: Storage, pipeline_factory: PipelineFactory, work_dir: Path):
        self.store = store
        self.storage = storage
        self.pipeline_factory = pipeline_factory
        self.work_dir = Path(work_dir)
        super().__init__("kontext-training", 1.0)

    def on_start(self) -> None:
        self.store.requeue_interrupted()

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)

    def tick(self) -> bool:
        return self.run_once()

    def run_once(self) -> bool:
        """Claim and run the oldest queued run; False when there was none."""
        run = self.store.claim()
        if run is None:
            return False
        try:
            self._run(run)
        except KontextError as exc:
            self.store.finish(run.id, RunStatus.FAILED, error=str(exc))
        except Exception as exc:
            log.exception("training run %s failed", run.id)
            self.store.finish(run.id, RunStatus.FAILED, error=f"internal error: {exc.__class__.__name__}: {exc}")
        return True

    def _run(self, run: TrainingRun) -> None:
        from kontext_studio.training.config import TrainConfig
        from kontext_studio.training.dataset import DEFAULT_MIN_SIDE, check_dataset
        from kontext_studio.training.trainer import LoraTrainer, StepInfo, TrainingError

        folder = self.work_dir / run.id
        data_dir = folder / "dataset"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        root = extract_dataset(self.storage.get(run.dataset_key), data_dir)
        raw = dict(run.config)
        min_side = int(raw.pop("min_side", DEFAULT_MIN_SIDE))  # a check setting stored with the recipe
        config = TrainConfig.from_dict(raw)
        report = check_dataset(root, default_instruction=config.default_instruction, min_side=min_side)
        if not report.usable:
            raise TrainingError("the dataset has no usable pairs:\n" + report.summary())
        resume = folder / "out" if (folder / "out" / "checkpoints").is_dir() else None
        pipe, described = self.pipeline_factory(config.base_precision)
        last = {"progress": 0.0, "cancel": 0.0}
        stored_sheets: set[str] = set()
        trainer: LoraTrainer | None = None

        def store_sheets() -> list[dict[str, Any]]:
            out = []
            assert trainer is not None
            for v in trainer.validations:
                key = f"training/{run.id}/validation/{Path(v['sheet']).name}"
                if key not in stored_sheets and Path(v["sheet"]).is_file():
                    self.storage.put(key, Path(v["sheet"]).read_bytes())
                    stored_sheets.add(key)
                out.append({k: v[k] for k in ("step", "latent_distance", "pixel_distance", "identity")}
                           | {"image_key": key})
            return out

        def on_step(info: StepInfo) -> None:
            now = time.monotonic()
            if now - last["progress"] >= PROGRESS_EVERY or info.step == info.total:
                last["progress"] = now
                self.store.progress(run.id, step=info.step, progress=info.step / info.total, loss=info.loss,
                                    validations=store_sheets())

        def should_stop() -> bool:
            now = time.monotonic()
            if self._stop.is_set():
                return True
            if now - last["cancel"] < CANCEL_EVERY:
                return False
            last["cancel"] = now
            return self.store.cancel_requested(run.id)

        trainer = LoraTrainer(pipe, config, folder / "out", base_model=described, cache_dir=self.work_dir / "cache",
                              on_step=on_step, should_stop=should_stop)
        result = trainer.train(report, resume=resume)
        validations = store_sheets()
        if result.status != "completed":
            if self._stop.is_set() and not self.store.cancel_requested(run.id):
                # The server is stopping: leave the run running; the next start re-queues and resumes it.
                return
            self.store.finish(run.id, RunStatus.CANCELED, step=result.step, validations=validations)
            return
        assert result.lora_path is not None
        lora_id = new_id()
        key = lora_key(lora_id)
        data = result.lora_path.read_bytes()
        self.storage.put(key, data)
        _state, info = read_lora(result.lora_path)
        sha = file_sha256(result.lora_path)
        self.store.add_lora(run.user_id, lora_id, run.name, key, sha, info.rank, info.alpha, run.id)
        # Recorded as the user's file too: predictions check ownership of the keys they name that way.
        SqlFiles(self.store.sessions).record(run.user_id, key, sha, "application/octet-stream", len(data))
        self.store.finish(run.id, RunStatus.SUCCEEDED, step=result.step, progress=1.0,
                          loss=result.losses[-1] if result.losses else None, validations=validations,
                          data_hash=result.data_hash)
        # The adapter is in storage now; the unpacked data and the checkpoints (optimiser states: hundreds of
        # MB at full size) are not needed any more. The logs stay.
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(folder / "out" / "checkpoints", ignore_errors=True)



def build_training(sessions: Any, storage: Storage, editor: Any, work_dir: Path | None = None,
                   accounts: Any = None, price: int = 0) -> tuple[TrainingStore, TrainingRunner]:
    """The service's training store and runner; the runner loads the editor's local weights for each run.

    ``work_dir`` (default: a folder in the system's temporary directory) holds unpacked datasets, checkpoints
    and the latent cache. With ``accounts``, each run holds ``price`` credits (see ``TrainingStore``).
    """
    import tempfile

    store = TrainingStore(sessions, accounts, price)
    folder = work_dir or Path(tempfile.gettempdir()) / "kontext-studio-training"
    return store, TrainingRunner(store, storage, pipeline_factory_for(editor), folder)
