"""``/v1/tools``: the free editing tools over HTTP, and the one-click AI tools as ordinary predictions.

- ``GET /v1/tools``: every tool as data (parameters, limits, price: 0 for free tools, the edit price per model
  for AI tools, keyed by the model's name: ``flux-kontext-dev``, ``flux-2-klein-4b``...), and the models AI
  tools run on (every catalogue model that edits, with whether it can run on this server).
- ``POST /v1/tools/{name}`` for a free tool: multipart (``images`` files, optional ``mask`` file, ``format``,
  ``quality``, any other field is a parameter) or JSON (``images`` as your file ids or data URLs, ``mask``,
  ``params``, ``format``, ``quality``). Answers the picture itself, or with ``Accept: application/json`` stores
  it as one of your files and answers its id and URL (so it can go straight into an edit). Never charges;
  rate-limited per user and per address.
- ``POST /v1/tools/{name}`` for an AI tool: JSON ``{"input_image", "model", "params", "seed"}``; ``model`` is any
  catalogue model that edits, named as predictions name models (default Kontext [dev]). It submits a prediction
  through the same path as ``POST /v1/predictions`` (same price, same holds and refunds) and answers its
  envelope.
- ``GET`` / ``PUT /v1/tools/settings``: administrators open the free tools to visitors without an account
  (off by default).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from kontext_studio.core.catalogue import CATALOGUE, Catalogue, ModelEntry
from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.api.problems import Unauthorized
from kontext_studio.service.inputs import upload_key, upload_sha256
from kontext_studio.service.jobs.predictions import tier_of
from kontext_studio.service.limits import Limiter, LimiterFactory, RateLimited, memory_limiters, over_limit
from kontext_studio.service.models import ModelCatalogue
from kontext_studio.service.security.uploads import MEDIA_TYPES, check_content_length, read_limited
from kontext_studio.service.storage.files_sql import SqlFiles
from kontext_studio.service.storage.signed_urls import UrlSigner
from kontext_studio.service.storage.storage_base import Storage

MAX_BODY = 60 * 2**20  # a collage of several phone photos
VISITORS_SETTING = "tools_open_to_visitors"
OUT_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
RESERVED_FIELDS = ("images", "image", "mask", "format", "quality")


class Forbidden(KontextError):
    """Signed in, but not allowed (HTTP 403)."""

    code = "forbidden"
    http_status = 403


class ToolSettingsIn(BaseModel):
    open_to_visitors: bool


class ToolSettings:
    """The administrator's switch, in the server settings table (so every API process sees the same value)."""

    def __init__(self, store: Any, default: bool):
        self.store, self.default = store, default

    @property
    def open_to_visitors(self) -> bool:
        value = self.store.get(VISITORS_SETTING)
        return self.default if value is None else value == "1"

    def set(self, value: bool, by: int | None) -> None:
        self.store.put(VISITORS_SETTING, "1" if value else "0", by)


DEFAULT_MODEL = "flux-kontext-dev"


def edit_model(model: Any, catalogue: Catalogue = CATALOGUE) -> ModelEntry:
    """The catalogue model an AI tool runs on: named as predictions name models, and one that edits.

    Args:
        model: the request's ``model`` (full name, its last part or short key; None or empty: Kontext [dev]).
        catalogue: the server's catalogue (its prices are the ones charged).

    Returns:
        The model's entry.

    Raises:
        InvalidRequest: (field ``model``) an unknown name, or a model that only generates from text, naming the
            value and the models an AI tool can run on.
    """
    text = model if model not in (None, "") else DEFAULT_MODEL
    try:
        entry: ModelEntry | None = catalogue.resolve(tier_of(text), "model")  # the predictions' own resolver
    except InvalidRequest:
        entry = None
    if entry is not None and entry.can_edit:
        return entry
    editors = ", ".join(e.name for e in catalogue if e.can_edit)
    shown = repr(model)[:120]
    why = (f"{entry.title} ({entry.name}) only generates from text and cannot edit a photo" if entry is not None
           else f"there is no model named {shown}")
    raise InvalidRequest(f"model: {why}; AI tools are edits, so pick a model that edits: {editors}"[:1500],
                         field="model")


def _check(limiter: Limiter, key: int | str) -> None:
    """The limiter's check, refusing in the words of this endpoint (free tool runs, not predictions)."""
    try:
        limiter.check(key)
    except RateLimited as exc:
        raise over_limit(limiter.limit, limiter.window, exc.retry_after, "free tool runs") from None


def tools_router(*, storage: Storage, sessions: Any, settings_store: Any, user: Callable[..., UserRecord],
                 signer: UrlSigner,
                 submit: Callable[[UserRecord, str, dict[str, Any]], str], get_job: Callable[[int, str], Any],
                 envelope_for: Callable[[Request, Any], dict[str, Any]], free: bool = False,
                 per_user_limit: int = 30, per_address_limit: int = 60, open_to_visitors: bool = False,
                 concurrency: int = 2, models: ModelCatalogue | None = None,
                 limiters: LimiterFactory = memory_limiters) -> APIRouter:
    """The tools routes.

    Args:
        storage: where uploads and outputs are kept.
        sessions: the database session factory (the caller's files: ownership of ids, outputs recorded).
        settings_store: the server settings (``get(name)``, ``put(name, value, by)``), where the visitors
            switch is kept.
        user: the service's authentication (raises ``Unauthorized`` without valid credentials).
        signer: signs file URLs handed back.
        submit: submits a prediction for a user (the model's key, ``{"model", "input"}``) through the normal path
            and returns its id: AI tools are charged exactly like an edit because they are one.
        get_job, envelope_for: read a prediction back and shape it like ``GET /v1/predictions/{id}``.
        free: the server's credit prices are off (AI tools then cost 0 like every edit).
        per_user_limit, per_address_limit: free tool runs per minute per user and per client address.
        open_to_visitors: the free tools' default openness to visitors without an account.
        concurrency: free tools running at once (they use every core they get).
        models: the server's models (its catalogue and prices, and which can run here); None: the default
            catalogue, every model listed as available.
        limiters: builds the two limits (the service's: in Redis when its API processes share one, so a
            client gets the limit once, not once per process).
    """
    router = APIRouter(tags=["tools"])
    files = SqlFiles(sessions)
    settings = ToolSettings(settings_store, open_to_visitors)
    by_user = limiters("tools-user", per_user_limit, 60.0)
    by_address = limiters("tools-address", per_address_limit, 60.0)
    gate = threading.BoundedSemaphore(concurrency)

    def caller(request: Request, authorization: Annotated[str | None, Header()] = None,
               x_key: Annotated[str | None, Header()] = None) -> UserRecord | None:
        try:
            return user(request, authorization, x_key)
        except Unauthorized:
            if authorization or x_key:
                raise  # a wrong key is an error, not a visitor
            return None

    # The dependency is given as a default (not an Annotated alias): this module's annotations are strings,
    # which FastAPI resolves in the module's globals, where a local alias does not exist.
    caller_dep = Depends(caller)

    catalogue = models.catalogue if models is not None else CATALOGUE

    def edit_models() -> list[dict[str, Any]]:
        """Every catalogue model that edits, priced as an edit on it, with whether it can run here."""
        if models is not None:
            listed = [(m.entry, m.price, m.configured) for m in models.list(every=True) if m.entry is not None]
        else:
            listed = [(e, 0 if free else e.price_credits, True) for e in catalogue]
        return [{"name": e.short_name, "full_name": e.name, "key": e.key, "title": e.title, "credits": price,
                 "max_references": e.max_references, "local": e.local, "configured": configured}
                for e, price, configured in listed if e.can_edit]

    @router.get("/v1/tools")
    def list_tools_route() -> dict[str, Any]:
        """The free tools (parameters, limits, whether their model is installed), the AI tools with their price on
        every model that edits (``credits``, by model name), and those models with whether each can run here."""
        from kontext_studio.tools import list_tools
        from kontext_studio.tools.ai import AI_TOOLS
        from kontext_studio.tools.models import status

        installed = status()
        editors = edit_models()
        prices = {m["name"]: m["credits"] for m in editors}
        return {"free": [{**t.as_dict(), "installed": installed.get(t.model, True) if t.model else True}
                         for t in list_tools()],
                "ai": [{**t.as_dict(prices), "kind": "ai"} for t in AI_TOOLS.values()],
                "models": editors, "open_to_visitors": settings.open_to_visitors}

    @router.get("/v1/tools/settings")
    def get_settings(me: UserRecord | None = caller_dep) -> dict[str, Any]:
        _admin(me)
        return {"open_to_visitors": settings.open_to_visitors}

    @router.put("/v1/tools/settings")
    def put_settings(body: ToolSettingsIn, me: UserRecord | None = caller_dep) -> dict[str, Any]:
        """Open the free tools to visitors without an account, or close them again (administrators)."""
        _admin(me)
        assert me is not None
        settings.set(body.open_to_visitors, me.id)
        return {"open_to_visitors": settings.open_to_visitors}

    def _admin(me: UserRecord | None) -> None:
        if me is None:
            raise Unauthorized("send an administrator's API key")
        if not me.is_admin:
            raise Forbidden("only an administrator can change the tools settings")

    @router.post("/v1/tools/{name}", responses={200: {"content": {m: {} for m in OUT_MEDIA.values()}}})
    async def run_tool_route(name: str, request: Request, me: UserRecord | None = caller_dep,
                             accept: Annotated[str | None, Header()] = None) -> Response:
        """Run a free tool on your images (answers the picture), or submit an AI tool as a prediction."""
        from kontext_studio.tools import get_tool
        from kontext_studio.tools.ai import get_ai_tool

        ai = get_ai_tool(name)
        if ai is not None:
            if me is None:
                raise Unauthorized("AI tools are edits and cost credits: send an API key")
            body = await _json_body(request)
            instruction = ai.build(body.get("params") or {})
            image = body.get("input_image") or (body.get("images") or [None])[0]
            if not image:
                raise InvalidRequest("input_image is required: your file id (file:...) or a data URL",
                                     field="input_image")
            entry = edit_model(body.get("model"), catalogue)  # refused before anything is held
            fields: dict[str, Any] = {"prompt": instruction, "input_image": image}
            for key in ("seed", "aspect_ratio", "output_format", "num_inference_steps"):
                if body.get(key) is not None:
                    fields[key] = body[key]
            job_id = await run_in_threadpool(submit, me, entry.key, {"model": entry.name, "input": fields})
            job = await run_in_threadpool(get_job, me.id, job_id)
            env = envelope_for(request, job)
            return JSONResponse({**env, "tool": ai.name, "instruction": instruction}, status_code=201)

        spec = get_tool(name)  # 404 for an unknown name, before anything is read
        if me is None and not settings.open_to_visitors:
            raise Unauthorized("sign in or send an API key: this server has not opened the free tools to visitors")
        client = request.client.host if request.client else "unknown"
        if me is not None:
            await run_in_threadpool(_check, by_user, me.id)  # a Redis round trip: off the event loop
        await run_in_threadpool(_check, by_address, client)
        images, mask, params, fmt, quality = await _read_inputs(request, me)
        if fmt == "jpeg" and spec.limits.alpha_out:
            raise InvalidRequest(f"{spec.title} makes a transparent picture, which JPEG cannot hold: ask for png or "
                                 "webp", field="format")
        if fmt and any(p.name == "format" for p in spec.params):
            params.setdefault("format", fmt)  # convert / compress: the answer's format is the tool's own
        from kontext_studio.tools import result_bytes, run_tool
        from kontext_studio.tools.signing import sign_tool_result

        def work() -> tuple[Any, bytes | None, str | None, bool]:
            with gate:
                result = run_tool(spec.name, images, params, mask=mask)
                if result.image is None and result.encoded is None:
                    return result, None, None, False
                out_fmt = fmt or result.format or _input_format(images[0], result)
                data, out_fmt = result_bytes(result, out_fmt, quality)
                signed = sign_tool_result(data, out_fmt, spec, result, images)
                return result, signed.data, out_fmt, signed.signed

        result, data, out_fmt, signed = await run_in_threadpool(work)
        if data is None:
            return JSONResponse({"tool": spec.name, "info": result.info, "credits": 0})
        assert out_fmt is not None
        wants_json = bool(accept and "application/json" in accept)
        if wants_json and me is not None:
            kind = out_fmt if out_fmt in MEDIA_TYPES else None
            if kind is None:
                raise InvalidRequest(f"a {out_fmt} result cannot be kept as a file for edits; ask for png, jpeg "
                                     "or webp, or take the picture itself (no Accept: application/json)",
                                     field="format")
            key = upload_key(data, kind)
            await run_in_threadpool(_keep, me.id, key, kind, data)
            expires, sig = signer.sign(key)
            url = f"{str(request.base_url).rstrip('/')}/v1/files/{key}?expires={expires}&sig={sig}"
            return JSONResponse({"tool": spec.name, "info": result.info, "credits": 0,
                                 "content_credentials": signed,
                                 "output": {"id": f"file:{key}", "content_type": MEDIA_TYPES[kind], "size": len(data),
                                            "urls": {"get": url}}})
        info = json.dumps(result.info, default=str, ensure_ascii=True)
        headers = {"X-Tool-Info": info if len(info) < 4000 else "{}", "X-Content-Type-Options": "nosniff",
                   "X-Content-Credentials": "signed" if signed else "unsigned", "X-Credits": "0",
                   "Content-Disposition": f'inline; filename="{spec.name}.{"jpg" if out_fmt == "jpeg" else out_fmt}"'}
        return Response(data, media_type=OUT_MEDIA[out_fmt], headers=headers)

    def _keep(user_id: int, key: str, kind: str, data: bytes) -> None:
        storage.put(key, data)
        files.record(user_id, key, upload_sha256(key), MEDIA_TYPES[kind], len(data))

    def _input_format(first: bytes, result: Any) -> str:
        from PIL import Image

        if result.image is not None and result.image.mode in ("RGBA", "LA"):
            return "png"
        import io

        try:
            with Image.open(io.BytesIO(first)) as img:
                fmt = (img.format or "").lower()
        except Exception:  # the tool already read it; this only picks the answer's format
            fmt = ""
        return fmt if fmt in ("jpeg", "webp", "png") else "png"

    async def _json_body(request: Request) -> dict[str, Any]:
        check_content_length(request.headers.get("content-length"), MAX_BODY)
        raw = await read_limited(request.stream(), MAX_BODY)
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object", field="body")
        return body

    def _image_value(value: Any, field: str, me: UserRecord | None) -> bytes:
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{field} must be a file id (file:...) or a data URL", field=field)
        if value.startswith("file:"):
            key = value[5:]
            if me is None or not files.owns(me.id, key):
                raise InvalidRequest(f"{field}: no file of yours has the id {value!r}", field=field)
            return storage.get(key)
        payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError:
            raise InvalidRequest(f"{field} must be a file id (file:...) or a base64 data URL", field=field) from None

    async def _read_inputs(request: Request, me: UserRecord | None) -> tuple[list[bytes], bytes | None,
                                                                             dict[str, Any], str | None, int]:
        check_content_length(request.headers.get("content-length"), MAX_BODY)
        ctype = request.headers.get("content-type", "")
        params: dict[str, Any] = {}
        if ctype.startswith("multipart/form-data"):
            # Read under the cap first; Starlette then parses the form from the bytes already read.
            request._body = await read_limited(request.stream(), MAX_BODY)
            images: list[bytes] = []
            mask = None
            async with request.form() as form:  # closes the spooled files it made
                for key, value in form.multi_items():
                    if hasattr(value, "read"):
                        data = await value.read()
                        if key in ("images", "image"):
                            images.append(data)
                        elif key == "mask":
                            mask = data
                        else:
                            raise InvalidRequest(f"unexpected file field {key!r}: send images (one or more) and "
                                                 "mask", field=key)
                    elif key not in RESERVED_FIELDS:
                        params[key] = value
                fmt, quality = form.get("format"), form.get("quality")
        else:
            body = await _json_body(request)
            raw_images = body.get("images") or ([body["image"]] if body.get("image") else [])
            if not isinstance(raw_images, list):
                raise InvalidRequest("images must be a list of file ids or data URLs", field="images")
            images = [await run_in_threadpool(_image_value, v, f"images[{i}]", me) for i, v in enumerate(raw_images)]
            mask = await run_in_threadpool(_image_value, body["mask"], "mask", me) if body.get("mask") else None
            raw_params = body.get("params") or {}
            if not isinstance(raw_params, dict):
                raise InvalidRequest("params must be an object of parameter values", field="params")
            params = raw_params
            fmt, quality = body.get("format"), body.get("quality")
        if not images:
            raise InvalidRequest("send at least one image (multipart field images, or images in JSON)", field="images")
        fmt_text = str(fmt).lower().replace("jpg", "jpeg") if fmt else None
        if fmt_text is not None and fmt_text not in OUT_MEDIA:
            raise InvalidRequest(f"format must be one of {', '.join(OUT_MEDIA)}; got {fmt!r}", field="format")
        try:
            q = int(str(quality)) if quality not in (None, "") else 92
        except ValueError:
            q = -1
        if not 1 <= q <= 100:
            raise InvalidRequest(f"quality must be a whole number from 1 to 100; got {quality!r}", field="quality")
        return images, mask, params, fmt_text, q

    return router
