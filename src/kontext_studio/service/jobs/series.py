"""Series: one reference set, one prediction per scene with a shared seed, and a contact sheet of the
finished scenes (built one picture at a time, each reduced to its thumbnail before the next is decoded)."""

from __future__ import annotations

import io
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.contact_sheet import contact_sheet
from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.accounts.accounts_base import AccountsBase
from kontext_studio.service.accounts.accounts_common import InsufficientCredits, NotFound, UserRecord
from kontext_studio.service.db import new_id
from kontext_studio.service.db.models_studio import Series
from kontext_studio.service.jobs.predictions import PredictionService, Submission, tier_of

MAX_SCENES = 12
SHEET_CELL = 320  # the sheet's cell side: no picture is held larger than this
# Contact sheets decode pictures: at most this many are built at once, whatever the number of requests.
SHEETS_AT_ONCE = 2


@dataclass(frozen=True)
class SeriesRequest:
    model: str | None
    input: dict[str, Any]
    scenes: list[str]


class SeriesService:
    """Create series and read them back.

    Args:
        sessions: the database's session factory.
        accounts: balances (the whole series' price must be available before anything is queued).
        predictions: submits each scene with every check a prediction gets.
        free: prices switched off.
    """

    def __init__(self, sessions: sessionmaker[Session], accounts: AccountsBase, predictions: PredictionService,
                 free: bool):
        self.sessions, self.accounts, self.predictions, self.free = sessions, accounts, predictions, free
        self._sheets = threading.BoundedSemaphore(SHEETS_AT_ONCE)

    def create(self, me: UserRecord, body: SeriesRequest) -> str:
        """Queue one prediction per scene, all or nothing. Blocking: call it off the event loop.

        Raises:
            InvalidRequest: no scene or too many, or an unknown model.
            InsufficientCredits: the whole series' price is not available.
        """
        scenes = [s.strip() for s in body.scenes if s.strip()]
        if not 1 <= len(scenes) <= MAX_SCENES:
            raise InvalidRequest(f"scenes: give 1 to {MAX_SCENES} instructions, one per line; got {len(scenes)}",
                                 field="scenes")
        tier = tier_of(body.model)
        # The same catalogue and prices the predictions use, so a series of any model costs its scenes' sum.
        entry = self.predictions.policy.catalogue.resolve(tier, "model")
        price = 0 if self.free else entry.price_credits * len(scenes)
        balance = self.accounts.balance(me.id)
        if balance.available < price:
            raise InsufficientCredits(balance.available, price)
        shared = {**body.input}
        if shared.get("seed") is None:
            shared["seed"] = secrets.randbelow(2**31)
        series_id = new_id()
        ids: list[str] = []
        try:
            for n, scene in enumerate(scenes):
                # The first scene passes every check a submission does (rate limit, active-job cap); the rest
                # carry an idempotency key, so a series counts once toward the cap and a retry repeats nothing.
                job_id, _ = self.predictions.submit(
                    me, tier, Submission(input={**shared, "prompt": scene}, model=entry.name),
                    idempotency_key=None if n == 0 else f"series:{series_id}:{n}")
                ids.append(job_id)
        except KontextError:
            for job_id in ids:  # all or nothing: what was queued is canceled and its hold released
                self.predictions.cancel(me.id, job_id)
            raise
        with self.sessions.begin() as s:
            s.add(Series(id=series_id, user_id=me.id, job_ids=ids))
        return series_id

    def job_ids(self, user_id: int, series_id: str) -> list[str]:
        """The series' predictions in scene order.

        Raises:
            NotFound: not the user's series.
        """
        with self.sessions() as s:
            row = s.get(Series, series_id)
            if row is None or row.user_id != user_id:
                raise NotFound(f"no series {series_id}")
            return list(row.job_ids)

    def contact_sheet(self, user_id: int, series_id: str) -> bytes:
        """A PNG grid of the finished scenes, labelled with instruction, seed and identity score.

        Raises:
            NotFound: not the user's series.
            InvalidRequest: no scene has finished yet.
        """
        images, labels = [], []
        with self._sheets:
            for n, job_id in enumerate(self.job_ids(user_id, series_id), start=1):
                job = self.predictions.get(user_id, job_id)
                data = self.predictions.output_bytes(job)
                if data is None:
                    continue
                out = job.output or {}
                sim = (out.get("identity") or {}).get("similarity")
                score = "" if sim is None else f", identity {sim:.2f}"
                images.append(_thumbnail(data, SHEET_CELL))
                labels.append(f"{n}. {job.input.get('prompt')} (seed {out.get('seed')}{score})")
            if not images:
                raise InvalidRequest("the series has no finished scene yet; wait for one to succeed",
                                     field="series")
            buf = io.BytesIO()
            contact_sheet(images, labels, cell=SHEET_CELL).save(buf, format="PNG")
        return buf.getvalue()


def _thumbnail(data: bytes, side: int) -> Image.Image:
    """Decode one picture straight to thumbnail size (JPEG decodes at a reduced scale), so a sheet holds
    thumbnails, never full-size pictures."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (side, side))
        img.thumbnail((side, side))
        return img.convert("RGB")
