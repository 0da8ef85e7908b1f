"""Edit sessions: a tree of predictions, each editing its parent's output, with each output's drift from the
picture the session started from. Reads never write: drift is measured when a turn is read and kept in
memory (it is a pure function of two stored files)."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.accounts.accounts_common import NotFound
from kontext_studio.service.db.models_studio import EditSession, EditTurn
from kontext_studio.service.jobs.predictions import PredictionService

DRIFT_CACHE = 1024


class AnalysisUnavailable(KontextError):
    """The analysis extra (dlib, OpenCV) is not installed on this server."""

    code = "analysis_unavailable"
    http_status = 501


def open_image(data: bytes) -> Image.Image:
    """Decode stored image bytes to RGB."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def measure_drift(origin: bytes, output: bytes) -> tuple[float | None, str]:
    """Similarity of an output to the picture its session started from (1 = unchanged identity).

    Raises:
        AnalysisUnavailable: the analysis extra is not installed.
    """
    try:
        from kontext_studio.analysis.identity import compare_identity
    except ImportError:
        raise AnalysisUnavailable("drift needs the analysis extra (pip install 'kontext-studio[analysis]')") \
            from None
    report = compare_identity(open_image(origin), open_image(output))
    return report.similarity, report.method


@dataclass(frozen=True)
class TurnView:
    """One turn as read: the prediction, its parent, its place, and its drift (None when not measurable)."""

    job_id: str
    parent_job_id: str | None
    turn: int
    branch: bool
    drift: tuple[float | None, str] | None


@dataclass(frozen=True)
class SessionView:
    id: str
    origin_key: str
    turns: list[TurnView]


class EditSessions:
    """Create sessions, add turns, read a session with drift.

    Args:
        sessions: the database's session factory.
        predictions: the prediction service (ownership checks and outputs).
    """

    def __init__(self, sessions: sessionmaker[Session], predictions: PredictionService):
        self.sessions, self.predictions = sessions, predictions
        self._drift: OrderedDict[str, tuple[float | None, str] | None] = OrderedDict()
        self._lock = threading.Lock()

    def _owned(self, s: Session, user_id: int, session_id: str) -> EditSession:
        row = s.get(EditSession, session_id)
        if row is None or row.user_id != user_id:
            raise NotFound(f"no edit session {session_id}")
        return row

    def create(self, user_id: int, prediction_id: str) -> str:
        """Start a session from a prediction (its first input is the origin; it is turn 1).

        Raises:
            JobNotFound: not the user's prediction.
            InvalidRequest: the prediction is already in a session.
        """
        job = self.predictions.get(user_id, prediction_id)
        with self.sessions.begin() as s:
            if s.get(EditTurn, job.id) is not None:
                raise InvalidRequest(f"prediction {job.id} is already in an edit session", field="prediction")
            row = EditSession(user_id=user_id, origin_key=job.input["images"][0])
            s.add(row)
            s.flush()
            s.add(EditTurn(job_id=job.id, session_id=row.id, parent_job_id=None, turn=1))
            return row.id

    def add_turn(self, user_id: int, session_id: str, prediction_id: str, parent_id: str) -> None:
        """Add a prediction that edited ``parent_id``'s output (a second child of one parent is a branch).

        Raises:
            NotFound, JobNotFound: not the user's session or prediction.
            InvalidRequest: the parent is not in the session, or the prediction is already in one.
        """
        self.predictions.get(user_id, prediction_id)
        with self.sessions.begin() as s:
            self._owned(s, user_id, session_id)
            parent = s.get(EditTurn, parent_id)
            if parent is None or parent.session_id != session_id:
                raise InvalidRequest(f"parent: prediction {parent_id} is not a turn of session {session_id}",
                                     field="parent")
            if s.get(EditTurn, prediction_id) is not None:
                raise InvalidRequest(f"prediction {prediction_id} is already in an edit session",
                                     field="prediction")
            s.add(EditTurn(job_id=prediction_id, session_id=session_id, parent_job_id=parent.job_id,
                           turn=parent.turn + 1))

    def read(self, user_id: int, session_id: str) -> SessionView:
        """The session's turns in order, with drift measured for finished ones.

        Raises:
            NotFound: not the user's session.
        """
        with self.sessions() as s:
            row = self._owned(s, user_id, session_id)
            origin_key = row.origin_key
            turns = list(s.scalars(select(EditTurn).where(EditTurn.session_id == session_id)
                                   .order_by(EditTurn.created_at, EditTurn.turn)).all())
            for t in turns:
                s.expunge(t)
        children: dict[str | None, int] = {}
        for t in turns:
            children[t.parent_job_id] = children.get(t.parent_job_id, 0) + 1
        views = []
        for t in turns:
            drift: tuple[float | None, str] | None = (t.drift, t.drift_method) if t.drift_method else None
            if drift is None:
                drift = self._drift_of(user_id, t.job_id, origin_key)
            views.append(TurnView(t.job_id, t.parent_job_id, t.turn,
                                  t.parent_job_id is not None and children.get(t.parent_job_id, 0) > 1, drift))
        return SessionView(session_id, origin_key, views)

    def _drift_of(self, user_id: int, job_id: str, origin_key: str) -> tuple[float | None, str] | None:
        with self._lock:
            if job_id in self._drift:
                return self._drift[job_id]
        data = self.predictions.output_bytes(self.predictions.get(user_id, job_id))
        if data is None:
            return None  # not finished yet: measured on a later read
        try:
            value: tuple[float | None, str] | None = measure_drift(self.predictions.storage.get(origin_key), data)
        except AnalysisUnavailable:
            value = None
        with self._lock:
            self._drift[job_id] = value
            while len(self._drift) > DRIFT_CACHE:
                self._drift.popitem(last=False)
        return value
