"""The in-process worker: claims jobs from the store and runs them on the warm engine.

One thread, one job at a time (one GPU). Cancellation is cooperative: the engine polls between denoising
steps, and a job canceled through the API stops at the next step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kontext_studio.core.catalogue import get_model
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import Canceled, KontextError
from kontext_studio.core.types import EditResult
from kontext_studio.service.background import PollingLoop
from kontext_studio.service.inputs import num_outputs, to_request
from kontext_studio.service.jobs.jobs_common import StaleAttempt
from kontext_studio.service.jobs.jobs_sql import Claim, JobRemoteTasks, JobStore
from kontext_studio.service.storage.storage_base import Storage

logger = logging.getLogger("kontext_studio.worker")


class InProcessWorker(PollingLoop):
    """Runs queued jobs in a background thread.

    Args:
        store: the job store.
        editor: the warm engine.
        storage: where inputs are read and outputs written.
        worker_id: name recorded on claimed jobs.
        poll_seconds: idle wait between queue checks (a submit wakes the worker at once).
        hosted_concurrency: hosted-tier (BFL) jobs waiting on BFL at once, each in its own thread.
    """

    def __init__(self, store: JobStore, editor: Editor, storage: Storage, worker_id: str = "local",
                 poll_seconds: float = 0.5, hosted_concurrency: int = 4):
        super().__init__("kontext-worker", poll_seconds)
        self.store, self.editor, self.storage = store, editor, storage
        self.worker_id, self.poll = worker_id, poll_seconds
        # Hosted jobs wait on the network, not the GPU: they run beside the local queue instead of blocking it.
        self._hosted_slots = threading.BoundedSemaphore(max(1, hosted_concurrency))

    def on_start(self) -> None:
        self.store.requeue_interrupted()  # jobs a restart interrupted run again, never forgotten

    def tick(self) -> bool:
        """Claim the next job and run it (hosted ones on their own thread); False when none waits."""
        claim = self.store.claim(self.worker_id)
        if claim is None:
            return False
        if self._hosted(claim):
            self._hosted_slots.acquire()
            threading.Thread(target=self._run_hosted, args=(claim,), name=f"kontext-hosted-{claim.job_id}",
                             daemon=True).start()
            return True
        self.run(claim)
        return True

    def _hosted(self, claim: Claim) -> bool:
        """Whether the claim's tier runs on a hosted backend (checked without building a local model)."""
        try:
            entry = get_model(claim.tier)
            return not entry.local and self.editor.backend_for(entry).name == "bfl_api"
        except KontextError:
            return False  # run() reports the problem on the job

    def _run_hosted(self, claim: Claim) -> None:
        try:
            self.run(claim)
        finally:
            self._hosted_slots.release()

    def run(self, claim: Claim) -> None:
        """Execute one claimed job to its end (success, failure, or cancel)."""
        canceled = threading.Event()

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase == "done" or total <= 0:
                return
            frac = done / total if phase.startswith(("denoise", "candidate")) else 0.0
            if not self.store.progress(claim, frac):
                canceled.set()

        keys: list[str] = []
        try:
            request = to_request(claim.input, claim.tier, self.storage)
            count = num_outputs(claim.input)
            results: list[EditResult] = []
            for i in range(count):  # num_outputs: the same recipe, seeds seed, seed+1, ...
                step = self._scaled(on_progress, i, count)
                if i:
                    request = dataclasses.replace(request, seed=results[0].seed + i)
                # Hosted tiers note their BFL task on the job, so a retried attempt resumes it, never re-sends.
                result = self.editor.edit(request, on_progress=step, cancel=canceled.is_set,
                                          remote_tasks=JobRemoteTasks(self.store, claim))
                suffix = {"jpeg": ".jpg", "webp": ".webp"}.get(result.output_format.value, ".png")
                with tempfile.TemporaryDirectory() as tmp:
                    path = result.save(Path(tmp) / f"out{suffix}")
                    key = f"outputs/{claim.job_id}/{claim.attempt}{f'-{i + 1}' if i else ''}{suffix}"
                    self.storage.put(key, path.read_bytes())
                keys.append(key)
                results.append(result)
            output: dict[str, Any] = {"files": keys, **results[0].summary()}
            if count > 1:
                output["outputs"] = [{"seed": r.seed, "identity": r.identity, "warnings": list(r.warnings)}
                                     for r in results]
            try:
                self.store.succeed(claim, output)
            except StaleAttempt:
                for key in keys:
                    self.storage.delete(key)  # canceled or reaped meanwhile: this attempt's output is void
        except Canceled:
            logger.info("prediction %s canceled", claim.job_id)
            for key in keys:
                self.storage.delete(key)  # the outputs made before the cancel are void too
        except KontextError as exc:
            self._fail(claim, str(exc), exc.code)
        except Exception as exc:
            logger.exception("prediction %s crashed", claim.job_id)
            self._fail(claim, f"internal error: {exc.__class__.__name__}", "internal_error")

    @staticmethod
    def _scaled(on_progress: Callable[[str, int, int], None], index: int,
                count: int) -> Callable[[str, int, int], None]:
        """Progress of output ``index`` of ``count`` as a share of the whole job."""
        if count == 1:
            return on_progress

        def step(phase: str, done: int, total: int) -> None:
            if phase == "done" or total <= 0:
                return
            on_progress(phase, index * total + done, count * total)

        return step

    def _fail(self, claim: Claim, message: str, code: str | None = None) -> None:
        with contextlib.suppress(StaleAttempt):  # canceled or reaped meanwhile: nothing to record
            self.store.fail(claim, message, code)
