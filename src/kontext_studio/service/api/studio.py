"""The API the web studio is built on, open to every client: reference checks and prompt coaching,
API keys, prediction search, queue position, recipes, promotion to another tier, edit sessions and series.

Everything here is plain ``/v1`` JSON behind the same authentication as the predictions API, so nothing
the studio does is out of reach of a script.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from PIL import Image
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.contact_sheet import contact_sheet
from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.core.registry import TIERS
from kontext_studio.service.accounts.accounts_common import ApiKeyRecord, InsufficientCredits, NotFound, UserRecord
from kontext_studio.service.accounts.accounts_sql import SqlAccounts
from kontext_studio.service.db import Job, JobStatus, new_id
from kontext_studio.service.db.models_studio import EditSession, EditTurn, Series
from kontext_studio.service.inputs import IMAGE_FIELDS, _decode_image
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.storage.storage_base import Storage

ROLES = ("subject", "garment", "style", "background", "object")
MAX_SCENES = 12
SEARCH_LIMIT = 100
# dlib's HOG face detector in the reference checker is shared and not thread-safe: two uploads checked at
# once crash the process, so checks run one at a time.
_CHECK_LOCK = threading.Lock()


class AnalysisUnavailable(KontextError):
    """The analysis extra (dlib, OpenCV) is not installed on this server."""

    code = "analysis_unavailable"
    http_status = 501


# -- request bodies ---------------------------------------------------------------------------------
class ReferenceCheckIn(BaseModel):
    image: str = Field(description="an uploaded file id (file:uploads/...), a data URL or base64 image")
    expect_face: bool = Field(default=False, description="the picture should show a person")


class CoachIn(BaseModel):
    prompt: str = Field(max_length=4000)
    references: int = Field(default=1, ge=0, le=4)
    roles: list[str | None] | None = None


class KeyIn(BaseModel):
    name: str = Field(default="", max_length=100)


class PromoteIn(BaseModel):
    tier: str = Field(default="pro", description="the tier to render the same recipe at")


class SessionIn(BaseModel):
    prediction: str = Field(description="the first prediction of the session (its first input is the origin)")


class TurnIn(BaseModel):
    prediction: str = Field(description="the prediction that edited the parent turn's output")
    parent: str = Field(description="the turn it continues from (a prediction id already in the session)")


class SeriesIn(BaseModel):
    model: str | None = None
    input: dict[str, Any] = Field(description="the prediction input shared by every scene (no prompt)")
    scenes: list[str] = Field(description="one instruction per scene, 1-12")


# -- queries (shared with the studio's pages) -------------------------------------------------------
def search_jobs(sessions: sessionmaker[Session], user_id: int, *, q: str | None = None, tier: str | None = None,
                status: str | None = None, limit: int = 50) -> list[Job]:
    """The user's predictions, newest first, filtered by words in the prompt, tier and status.

    Raises:
        InvalidRequest: an unknown tier or status (naming the accepted values).
    """
    stmt = select(Job).where(Job.user_id == user_id)
    if tier:
        if tier not in TIERS:
            raise InvalidRequest(f"tier must be one of {', '.join(TIERS)}; got {tier!r}", field="tier")
        stmt = stmt.where(Job.tier == tier)
    if status:
        allowed = [s.value for s in JobStatus]
        if status not in allowed:
            raise InvalidRequest(f"status must be one of {', '.join(allowed)}; got {status!r}", field="status")
        stmt = stmt.where(Job.status == status)
    for word in (q or "").split()[:8]:
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Job.input["prompt"].as_string().ilike(f"%{escaped}%", escape="\\"))
    with sessions() as s:
        rows = list(s.scalars(stmt.order_by(Job.created_at.desc()).limit(max(1, min(SEARCH_LIMIT, limit)))).all())
        for row in rows:
            s.expunge(row)
        return rows


def queue_position(sessions: sessionmaker[Session], job: Job) -> int:
    """How many predictions wait ahead of ``job`` (0 once it runs or ended)."""
    if job.status != JobStatus.STARTING:
        return 0
    with sessions() as s:
        ahead = s.scalar(select(func.count()).select_from(Job).where(
            Job.status.in_((JobStatus.STARTING, JobStatus.PROCESSING)), Job.created_at < job.created_at))
        return int(ahead or 0)


def key_public(record: ApiKeyRecord) -> dict[str, Any]:
    return {"id": record.id, "prefix": record.prefix, "name": record.name,
            "created_at": record.created_at.isoformat(),
            "last_used_at": record.last_used_at and record.last_used_at.isoformat(),
            "revoked_at": record.revoked_at and record.revoked_at.isoformat(), "active": record.active}


def _open_image(data: bytes) -> Image.Image:
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
    report = compare_identity(_open_image(origin), _open_image(output))
    return report.similarity, report.method


def studio_api_router(*, sessions: sessionmaker[Session], readers: sessionmaker[Session], accounts: SqlAccounts,
                      jobs: JobStore, storage: Storage, user: Any,
                      envelope_for: Callable[[Request, Job], dict[str, Any]],
                      file_url_for: Callable[[Request, str], str],
                      owns_file: Callable[[int, str], bool] | None = None,
                      submit: Callable[[UserRecord, str, dict[str, Any], str | None], str], free: bool) -> APIRouter:
    """The studio's API routes.

    Args:
        sessions, readers: session factories of the service database (writes, reads).
        accounts: users, keys and credits.
        jobs: the job store.
        storage: uploads and outputs.
        user: the FastAPI dependency that authenticates the caller.
        envelope_for: (request, job) → the prediction envelope, as ``GET /v1/predictions/{id}`` returns it.
        file_url_for: (request, storage key) → a signed URL for the file.
        owns_file: (user id, storage key) → whether the user uploaded that file (None: any stored upload).
        submit: (user, tier, {"model", "input"}, idempotency key or None) → a new prediction id, with all of
            ``POST /v1/predictions``'s checks (rate limit, active-job cap, credits held, input validated).
        free: prices are switched off.
    """
    router = APIRouter(prefix="/v1")

    def output_bytes(job: Job) -> bytes | None:
        files = (job.output or {}).get("files") or []
        return storage.get(files[0]) if files and job.status == JobStatus.SUCCEEDED else None

    # -- analysis -------------------------------------------------------------------------------------
    @router.post("/tools/check-reference", tags=["tools"])
    async def check_reference(body: ReferenceCheckIn, _user: UserRecord = Depends(user)) -> dict[str, Any]:
        """Run the reference checker on one picture: resolution, blur, exposure, faces, compression."""
        owns = (lambda key: owns_file(_user.id, key)) if owns_file is not None else None
        key = await asyncio.to_thread(_decode_image, body.image, "image", storage, owns)
        try:
            from kontext_studio.analysis.reference_check import check_reference as run_check
        except ImportError:
            raise AnalysisUnavailable("the reference checker needs the analysis extra "
                                      "(pip install 'kontext-studio[analysis]')") from None
        data = await asyncio.to_thread(storage.get, key)
        def run_locked() -> Any:
            with _CHECK_LOCK:
                return run_check(data, expect_face=body.expect_face)

        report = await asyncio.to_thread(run_locked)
        return {"image": f"file:{key}", **report.as_dict()}

    @router.post("/tools/coach", tags=["tools"])
    def coach_prompt(body: CoachIn, _user: UserRecord = Depends(user)) -> dict[str, Any]:
        """Lint an editing instruction: what Kontext will misread, with spans, fixes and one rewrite."""
        from kontext_studio.analysis.prompt_coach import coach

        roles = [r if r in ROLES else None for r in (body.roles or [])]
        return coach(body.prompt, references=body.references, roles=roles).as_dict()  # type: ignore[arg-type]

    # -- API keys -------------------------------------------------------------------------------------
    @router.get("/account/keys", tags=["account"])
    def list_keys(me: UserRecord = Depends(user)) -> dict[str, Any]:
        """The caller's API keys (prefix and name; the secret is never shown again)."""
        return {"results": [key_public(k) for k in accounts.list_api_keys(me.id)]}

    @router.post("/account/keys", status_code=201, tags=["account"])
    def create_key(body: KeyIn, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """A new API key; ``key`` is the secret, shown in this answer only."""
        plaintext, record = accounts.create_api_key(me.id, body.name.strip())
        return {**key_public(record), "key": plaintext}

    @router.delete("/account/keys/{key_id}", tags=["account"])
    def revoke_key(key_id: int = PathParam(ge=1, le=2**31 - 1),  # the ids' column range on every database
                   me: UserRecord = Depends(user)) -> dict[str, Any]:
        """Revoke one of the caller's keys; requests with it answer 401 from now on."""
        return key_public(accounts.revoke_key(key_id, user_id=me.id))

    # -- predictions: search, queue, recipe, promote --------------------------------------------------
    @router.get("/predictions/{prediction_id}/queue", tags=["predictions"])
    def prediction_queue(prediction_id: str, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """Where a waiting prediction stands: ``ahead`` predictions are waiting or running before it."""
        job = jobs.get(me.id, prediction_id)
        return {"id": job.id, "status": job.status, "ahead": queue_position(readers, job)}

    @router.get("/predictions/{prediction_id}/recipe", tags=["predictions"])
    def prediction_recipe(request: Request, prediction_id: str, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """The prediction's input as it can be submitted again (images as file ids), and the seed it used."""
        job = jobs.get(me.id, prediction_id)
        recipe = recipe_of(job)
        recipe["image_urls"] = [file_url_for(request, k) for k in job.input.get("images", [])]
        return recipe

    @router.post("/predictions/{prediction_id}/promote", status_code=201, tags=["predictions"])
    async def promote(request: Request, prediction_id: str, body: PromoteIn,
                      me: UserRecord = Depends(user)) -> dict[str, Any]:
        """Submit the same recipe (images, prompt, seed, settings) at another tier, e.g. a Fast draft at Pro."""
        job = await asyncio.to_thread(jobs.get, me.id, prediction_id)
        recipe = recipe_of(job)
        promoted = await asyncio.to_thread(submit, me, body.tier, {"model": f"flux-kontext-{body.tier}",
                                                                   "input": recipe["input"]}, None)
        return envelope_for(request, await asyncio.to_thread(jobs.get, me.id, promoted))


    def recipe_of(job: Job) -> dict[str, Any]:
        stored = dict(job.input)
        images = stored.pop("images", [])
        again: dict[str, Any] = {f: f"file:{k}" for f, k in zip(IMAGE_FIELDS, images, strict=False)}
        again.update(stored)
        seed = (job.output or {}).get("seed")
        if seed is not None:
            again["seed"] = seed
        return {"id": job.id, "tier": job.tier, "model": job.model, "status": job.status, "input": again,
                "recipe": (job.output or {}).get("recipe")}

    # -- edit sessions --------------------------------------------------------------------------------
    def owned_session(s: Session, me: UserRecord, session_id: str) -> EditSession:
        row = s.get(EditSession, session_id)
        if row is None or row.user_id != me.id:
            raise NotFound(f"no edit session {session_id}")
        return row

    @router.post("/sessions", status_code=201, tags=["sessions"])
    def create_session(request: Request, body: SessionIn, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """Start an edit session from a prediction: its first input is the origin, it is turn 1."""
        job = jobs.get(me.id, body.prediction)
        with sessions.begin() as s:
            if s.get(EditTurn, job.id) is not None:
                raise InvalidRequest(f"prediction {job.id} is already in an edit session", field="prediction")
            row = EditSession(user_id=me.id, origin_key=job.input["images"][0])
            s.add(row)
            s.flush()
            s.add(EditTurn(job_id=job.id, session_id=row.id, parent_job_id=None, turn=1))
            session_id = row.id
        return session_view(request, me, session_id)


    @router.post("/sessions/{session_id}/turns", status_code=201, tags=["sessions"])
    def add_turn(request: Request, session_id: str, body: TurnIn, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """Add a prediction that edited ``parent``'s output; a second child of one parent is a branch."""
        jobs.get(me.id, body.prediction)
        with sessions.begin() as s:
            owned_session(s, me, session_id)
            parent = s.get(EditTurn, body.parent)
            if parent is None or parent.session_id != session_id:
                raise InvalidRequest(f"parent: prediction {body.parent} is not a turn of session {session_id}",
                                     field="parent")
            if s.get(EditTurn, body.prediction) is not None:
                raise InvalidRequest(f"prediction {body.prediction} is already in an edit session",
                                     field="prediction")
            s.add(EditTurn(job_id=body.prediction, session_id=session_id, parent_job_id=parent.job_id,
                           turn=parent.turn + 1))
        return session_view(request, me, session_id)


    @router.get("/sessions/{session_id}", tags=["sessions"])
    def get_session(request: Request, session_id: str, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """The session's turns in order, each with its parent, output, and drift from the origin."""
        return session_view(request, me, session_id)


    def session_view(request: Request, me: UserRecord, session_id: str) -> dict[str, Any]:
        with sessions.begin() as s:
            row = owned_session(s, me, session_id)
            origin_key = row.origin_key
            turns = list(s.scalars(select(EditTurn).where(EditTurn.session_id == session_id)
                                   .order_by(EditTurn.created_at, EditTurn.turn)).all())
            for t in turns:
                s.expunge(t)
        children: dict[str | None, int] = {}
        for t in turns:
            children[t.parent_job_id] = children.get(t.parent_job_id, 0) + 1
        out = []
        for t in turns:
            job = jobs.get(me.id, t.job_id)
            if t.drift is None and t.drift_method is None and (data := output_bytes(job)) is not None:
                t.drift, t.drift_method = _store_drift(t.job_id, origin_key, data)
            env = envelope_for(request, job)
            out.append({"prediction": t.job_id, "parent": t.parent_job_id, "turn": t.turn,
                        "branch": t.parent_job_id is not None and children.get(t.parent_job_id, 0) > 1,
                        "status": job.status, "prompt": job.input.get("prompt"), "output": env["output"],
                        "drift": None if t.drift_method is None else {"similarity": t.drift,
                                                                     "method": t.drift_method}})
        return {"id": session_id, "origin": f"file:{origin_key}", "origin_url": file_url_for(request, origin_key),
                "turns": out}

    def _store_drift(job_id: str, origin_key: str, output: bytes) -> tuple[float | None, str | None]:
        try:
            similarity, method = measure_drift(storage.get(origin_key), output)
        except AnalysisUnavailable:
            return None, None
        with sessions.begin() as s:
            turn = s.get(EditTurn, job_id)
            if turn is not None:
                turn.drift, turn.drift_method = similarity, method
        return similarity, method

    # -- series ---------------------------------------------------------------------------------------
    @router.post("/series", status_code=201, tags=["series"])
    async def create_series(request: Request, body: SeriesIn, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """One reference set, one prediction per scene, all with the same seed (scenes differ only by their
        instruction). The whole series' price must be available before anything is queued."""
        scenes = [s.strip() for s in body.scenes if s.strip()]
        if not 1 <= len(scenes) <= MAX_SCENES:
            raise InvalidRequest(f"scenes: give 1 to {MAX_SCENES} instructions, one per line; got {len(scenes)}",
                                 field="scenes")
        name = (body.model or "flux-kontext-dev").split("/")[-1]
        tier = name.removeprefix("flux-kontext-")
        if tier not in TIERS:
            raise InvalidRequest(f"model must be one of {', '.join('flux-kontext-' + t for t in TIERS)}; "
                                 f"got {body.model!r}", field="model")
        price = 0 if free else TIERS[tier].price_credits * len(scenes)
        balance = await asyncio.to_thread(accounts.balance, me.id)
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
                ids.append(await asyncio.to_thread(submit, me, tier, {"model": f"flux-kontext-{tier}",
                                                                      "input": {**shared, "prompt": scene}},
                                                   None if n == 0 else f"series:{series_id}:{n}"))
        except KontextError:
            for job_id in ids:  # all or nothing: what was queued is canceled and its hold released
                await asyncio.to_thread(jobs.cancel, me.id, job_id)
            raise
        with sessions.begin() as s:
            row = Series(id=series_id, user_id=me.id, job_ids=ids)
            s.add(row)
        return await asyncio.to_thread(series_view, request, me, series_id)


    @router.get("/series/{series_id}", tags=["series"])
    def get_series(request: Request, series_id: str, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """The series' predictions in scene order, with their status, output and identity score."""
        return series_view(request, me, series_id)


    def owned_series(me: UserRecord, series_id: str) -> list[str]:
        with readers() as s:
            row = s.get(Series, series_id)
            if row is None or row.user_id != me.id:
                raise NotFound(f"no series {series_id}")
            return list(row.job_ids)

    def series_view(request: Request, me: UserRecord, series_id: str) -> dict[str, Any]:
        items = []
        for job_id in owned_series(me, series_id):
            env = envelope_for(request, jobs.get(me.id, job_id))
            identity = (env.get("result") or {}).get("identity") or {}
            items.append({"prediction": job_id, "prompt": env["input"].get("prompt"), "status": env["status"],
                          "progress": env["progress"], "output": env["output"],
                          "similarity": identity.get("similarity"), "seed": (env.get("result") or {}).get("seed")})
        done = all(i["status"] in ("succeeded", "failed", "canceled", "aborted") for i in items)
        base = str(request.base_url).rstrip("/")
        return {"id": series_id, "items": items, "done": done,
                "urls": {"contact_sheet": f"{base}/v1/series/{series_id}/contact-sheet"}}

    @router.get("/series/{series_id}/contact-sheet", tags=["series"],
                responses={200: {"content": {"image/png": {}}}})
    def series_contact_sheet(series_id: str, me: UserRecord = Depends(user)) -> Response:
        """A PNG grid of the finished scenes, each labelled with its instruction, seed and identity score."""
        images, labels = [], []
        for n, job_id in enumerate(owned_series(me, series_id), start=1):
            job = jobs.get(me.id, job_id)
            data = output_bytes(job)
            if data is None:
                continue
            out = job.output or {}
            sim = (out.get("identity") or {}).get("similarity")
            score = "" if sim is None else f", identity {sim:.2f}"
            images.append(_open_image(data))
            labels.append(f"{n}. {job.input.get('prompt')} (seed {out.get('seed')}{score})")
        if not images:
            raise InvalidRequest("the series has no finished scene yet; wait for one to succeed", field="series")
        buf = io.BytesIO()
        contact_sheet(images, labels).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="series-{series_id}.png"'})

    return router
