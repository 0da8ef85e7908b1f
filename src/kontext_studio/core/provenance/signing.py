"""Signing outputs with C2PA manifests (content credentials).

Every output Kontext Studio writes says, in a signed manifest embedded in the file, what made it: the
action (an AI edit or creation by a model, or a plain edit by a tool), the model, and the input images
as ingredients. When an input already carries a manifest (an earlier output, a camera's), it becomes
the parent ingredient, so the whole history travels with the file. Signing runs after the recipe and
XMP marks are written, and keeps them.

When the C2PA library is not installed, outputs are written unsigned and the result says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_studio.core.provenance.credentials import (
    ContentCredentials,
    CredentialsError,
    SigningIdentity,
    current_content_credentials,
)

logger = logging.getLogger(__name__)

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
DIGITAL_CREATION = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCreation"
GENERATOR = "Kontext Studio"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif",
        "heic": "image/heic", "heif": "image/heif", "tiff": "image/tiff", "tif": "image/tiff", "gif": "image/gif"}
NOT_INSTALLED = ("content credentials were not added: the c2pa-python package is not installed "
                 "(run `make install`, or pip install 'kontext-studio[credentials]')")
_warned: set[str] = set()


@dataclass(frozen=True)
class Ingredient:
    """An input image of an output.

    Attributes:
        data: the file's bytes as given (so a manifest inside it is kept as the parent's history).
        title: a name for it (file name, "reference 2"...).
    """

    data: bytes
    title: str = "input"

    @classmethod
    def from_source(cls, source: str | Path | bytes | Image.Image, title: str | None = None) -> Ingredient:
        """An ingredient from a path, raw bytes or a PIL image (encoded as PNG, so without history)."""
        if isinstance(source, str | Path):
            return cls(Path(source).read_bytes(), title or Path(source).name)
        if isinstance(source, bytes | bytearray):
            return cls(bytes(source), title or "input")
        buf = io.BytesIO()
        source.save(buf, format="PNG", compress_level=1)  # only hashed for the manifest: speed over size
        return cls(buf.getvalue(), title or "input")


@dataclass(frozen=True)
class ContentClaim:
    """What an output states about how it was made.

    Attributes:
        action: the C2PA action: ``c2pa.edited`` or ``c2pa.created`` for model outputs; for tools e.g.
            ``c2pa.resized``, ``c2pa.cropped``, ``c2pa.color_adjustments``, ``c2pa.filtered``,
            ``c2pa.background_removed``... (any ``c2pa.*`` action name).
        model: the model that made the pixels, for AI actions (e.g. the repo id or catalogue name).
        ai: whether a trained model made the change (digital source type trainedAlgorithmicMedia).
        description: the instruction or tool, in words.
        tool: the tool's name, for non-AI and AI tools.
        parameters: extra JSON-ready parameters to record (seed, tier, tool settings...).
        title: the output's file name, if known.
        derived: True when the output is a version of its first input (that input becomes the parent
            ingredient); False when it is a new picture composed of its inputs (a collage: every input is
            a component).
    """

    action: str = "c2pa.edited"
    model: str | None = None
    ai: bool = True
    description: str | None = None
    tool: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    derived: bool = True


@dataclass(frozen=True)
class SignedOutput:
    """The result of signing: the bytes to write, and whether they carry a manifest."""

    data: bytes
    signed: bool
    signer: str | None = None
    note: str | None = None


def c2pa_available() -> bool:
    """Whether the C2PA library can be imported."""
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def sniff_mime(data: bytes) -> str | None:
    """The MIME type of an image from its first bytes (None when unknown)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"heim"):
        return "image/heic"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def _reader_settings(trust_anchors_pem: bytes) -> dict[str, Any]:
    # Never reach the network while reading someone's file: no remote manifests, no OCSP look-ups.
    settings: dict[str, Any] = {"verify": {"verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False},
                                # No thumbnails: they cost time and bytes and the pixels are right there.
                                "builder": {"thumbnail": {"enabled": False}}}
    if trust_anchors_pem:
        settings["trust"] = {"user_anchors": trust_anchors_pem.decode("ascii")}
    return settings


def c2pa_context(trust_anchors_pem: bytes) -> Any:
    """A C2PA context that trusts ``trust_anchors_pem`` and makes no thumbnails."""
    import c2pa

    return c2pa.Context(settings=c2pa.Settings.from_dict(_reader_settings(trust_anchors_pem)))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kontext-studio")
    except Exception:  # not installed as a distribution (a source checkout on PYTHONPATH)
        return "0"


def build_manifest(claim: ContentClaim, ingredient_count: int) -> dict[str, Any]:
    """The manifest definition for ``claim`` with ``ingredient_count`` inputs.

    A derived output opens its first input (the parent), places any others, then applies the claim's
    action. Otherwise the output is created (by a model: trainedAlgorithmicMedia; else digitalCreation)
    and every input is placed into it as a component.
    """
    agent = {"name": GENERATOR, "version": _version()}
    main: dict[str, Any] = {"action": claim.action, "softwareAgent": agent}
    params: dict[str, Any] = dict(claim.parameters)
    if claim.model:
        params["model"] = claim.model
    if claim.tool:
        params["tool"] = claim.tool
    if claim.description:
        main["description"] = claim.description
    if claim.ai:
        main["digitalSourceType"] = TRAINED_ALGORITHMIC_MEDIA
    actions: list[dict[str, Any]] = []
    if ingredient_count and claim.derived:
        actions.append({"action": "c2pa.opened", "parameters": {"ingredientIds": ["ingredient-0"]}})
        if ingredient_count > 1:
            actions.append({"action": "c2pa.placed", "parameters": {
                "ingredientIds": [f"ingredient-{i}" for i in range(1, ingredient_count)]}})
        if main["action"] == "c2pa.created":  # an output with inputs is an edit of the first one
            main["action"] = "c2pa.edited"
    else:
        if main["action"] != "c2pa.created":
            actions.append({"action": "c2pa.created", "softwareAgent": agent,
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA if claim.ai else DIGITAL_CREATION})
        else:
            if not claim.ai:
                main["digitalSourceType"] = DIGITAL_CREATION
            actions.append(main)  # a creation comes first; the inputs are placed into it
        if ingredient_count:
            actions.append({"action": "c2pa.placed", "parameters": {
                "ingredientIds": [f"ingredient-{i}" for i in range(ingredient_count)]}})
    if params:
        main["parameters"] = params
    if not any(a is main for a in actions):
        actions.append(main)
    manifest: dict[str, Any] = {
        "claim_generator_info": [agent],
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}}],
    }
    if claim.title:
        manifest["title"] = claim.title
    return manifest


class _SignerCache:
    """One C2PA signer per identity and process (native handles do not survive a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._signer: Any = None
        self._context: Any = None

    def sign(self, identity: SigningIdentity, manifest: dict[str, Any], mime: str, data: bytes,
             ingredients: Sequence[Ingredient], derived: bool = True) -> bytes:
        import c2pa

        key = (os.getpid(), id(identity))
        with self._lock:
            if self._key != key or self._signer is None:
                info = c2pa.C2paSignerInfo(alg=identity.alg.encode(), sign_cert=identity.chain_pem,
                                           private_key=identity.key_pem, ta_url=None)
                self._signer, self._key = c2pa.Signer.from_info(info), key
                self._context = c2pa_context(identity.trust_anchors_pem)
            builder = c2pa.Builder(manifest, context=self._context)
            for i, ing in enumerate(ingredients):
                _add_ingredient(builder, ing, i, parent=derived)
            out = io.BytesIO()
            builder.sign(self._signer, mime, io.BytesIO(data), out)
            return out.getvalue()


def _add_ingredient(builder: Any, ing: Ingredient, index: int, parent: bool = True) -> None:
    import c2pa

    meta = {"title": ing.title, "relationship": "parentOf" if index == 0 and parent else "componentOf",
            "label": f"ingredient-{index}"}
    mime = sniff_mime(ing.data)
    if mime is not None:
        try:
            builder.add_ingredient(meta, mime, io.BytesIO(ing.data))
            return
        except c2pa.C2paError as exc:  # a damaged manifest or an odd container: keep the pixels' identity
            logger.info("ingredient %s read as a plain image (%s)", ing.title, exc)
    buf = io.BytesIO()
    try:
        with Image.open(io.BytesIO(ing.data)) as img:
            img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB").save(buf, format="PNG")
    except (OSError, ValueError):
        logger.info("ingredient %s is not a readable image; left out of the manifest", ing.title)
        return
    builder.add_ingredient(meta, "image/png", buf)


_signers = _SignerCache()


def _note_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def sign_output(image: bytes, fmt: str, claim: ContentClaim,
                ingredients: Sequence[Ingredient | str | Path | bytes | Image.Image] = (),
                credentials: ContentCredentials | None = None) -> SignedOutput:
    """Embed a signed C2PA manifest in an encoded image.

    Call it on the final bytes (after the recipe and XMP are written): the manifest hashes them.

    Args:
        image: the encoded output (PNG, JPEG, WebP; AVIF, HEIC, TIFF and GIF work too).
        fmt: its format: ``png``, ``jpeg``/``jpg``, ``webp``, ``avif``... (an ``OutputFormat`` works too).
        claim: what the output states (action, model, AI or not, description).
        ingredients: the input images, the one the output derives from first; paths, bytes, PIL images
            or :class:`Ingredient`.
        credentials: who signs; default the installation's (see ``use_content_credentials``).

    Returns:
        The signed bytes; or, when signing is unavailable (library missing, no credentials configured,
        an unsupported format), the input unchanged with ``signed=False`` and a note saying why.

    Raises:
        CredentialsError: the configured certificate or key cannot be used (a setup problem to fix).
    """
    fmt_name = str(getattr(fmt, "value", fmt)).lower().lstrip(".")
    mime = MIME.get(fmt_name)
    if mime is None:
        return SignedOutput(image, False, note=f"content credentials are not embedded in {fmt_name} files")
    creds = credentials or current_content_credentials()
    if creds is None:
        note = "content credentials were not added: no signing identity is configured for this process"
        _note_once(note)
        return SignedOutput(image, False, note=note)
    if not c2pa_available():
        _note_once(NOT_INSTALLED)
        return SignedOutput(image, False, note=NOT_INSTALLED)
    import c2pa

    identity = creds.identity()
    items = [i if isinstance(i, Ingredient) else Ingredient.from_source(i) for i in ingredients]
    try:
        data = _signers.sign(identity, build_manifest(claim, len(items)), mime, image, items, claim.derived)
    except c2pa.C2paError as exc:
        if "certificate" in str(exc).lower():
            raise CredentialsError(f"the C2PA library refused the signing certificate {identity.subject}: "
                                   f"{exc}") from None
        note = f"content credentials were not added: the C2PA library could not sign this {fmt_name} ({exc})"
        logger.warning(note)
        return SignedOutput(image, False, note=note)
    return SignedOutput(data, True, signer=identity.subject)


def sign_file(path: str | Path, claim: ContentClaim,
              ingredients: Sequence[Ingredient | str | Path | bytes | Image.Image] = (),
              credentials: ContentCredentials | None = None) -> SignedOutput:
    """Sign an image file in place (atomically: a crash never leaves half a file).

    Args:
        path: a PNG, JPEG or WebP file, recipe already embedded.
        claim, ingredients, credentials: as for :func:`sign_output`.

    Returns:
        What :func:`sign_output` returned (``data`` is what the file now holds).

    Raises:
        CredentialsError: as for :func:`sign_output`.
    """
    p = Path(path)
    raw = p.read_bytes()
    fmt = (sniff_mime(raw) or "").removeprefix("image/") or p.suffix
    if claim.title is None:
        claim = dataclasses.replace(claim, title=p.name)
    result = sign_output(raw, fmt, claim, ingredients, credentials)
    if result.signed:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(result.data)
            os.chmod(tmp, p.stat().st_mode & 0o777)
            os.replace(tmp, p)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return result


# The C2PA action each built-in tool performs (a tool not listed records ``c2pa.edited``).
TOOL_ACTIONS = {
    "remove-background": "c2pa.edited", "replace-background": "c2pa.edited", "portrait-blur": "c2pa.filtered",
    "upscale": "c2pa.resized", "denoise": "c2pa.filtered", "sharpen": "c2pa.filtered",
    "auto-enhance": "c2pa.color_adjustments", "color-adjust": "c2pa.color_adjustments", "erase": "c2pa.edited",
    "crop": "c2pa.cropped", "headshot": "c2pa.cropped", "rotate": "c2pa.orientation", "resize": "c2pa.resized",
    "convert": "c2pa.transcoded", "compress": "c2pa.transcoded", "add-text": "c2pa.drawing",
    "collage": "c2pa.created",
}
# Tools whose output is a new picture made of their inputs, rather than a version of the first one.
COMPOSING_TOOLS = frozenset({"collage"})


def sign_tool_output(image: bytes, fmt: str, tool: str,
                     inputs: Sequence[Ingredient | str | Path | bytes | Image.Image] = (), *,
                     ai: bool = False, model: str | None = None, description: str | None = None,
                     parameters: dict[str, Any] | None = None, action: str | None = None,
                     credentials: ContentCredentials | None = None) -> SignedOutput:
    """Sign a tool's output (call it for tools that change pixels, on the final encoded bytes).

    Args:
        image: the encoded output (PNG, JPEG or WebP).
        fmt: its format (``png``, ``jpeg``, ``webp``).
        tool: the tool's name (``resize``, ``remove-background``...): it picks the C2PA action.
        inputs: the tool's input images, the one it works on first (its manifest, if any, becomes the
            parent, so an edited-then-tooled image keeps its history).
        ai: True when a trained model made the new pixels (super-resolution, matting...).
        model: that model's name.
        description: what was done, in words.
        parameters: the tool's settings, JSON-ready.
        action: a C2PA action instead of the tool's usual one.
        credentials: who signs; default the installation's.

    Returns:
        See :func:`sign_output` (``data`` is what to write; ``note`` says why it is unsigned, if it is).

    Raises:
        CredentialsError: the configured certificate or key cannot be used.
    """
    claim = ContentClaim(action=action or TOOL_ACTIONS.get(tool, "c2pa.edited"), model=model, ai=ai,
                         description=description, tool=tool, parameters=dict(parameters or {}),
                         derived=tool not in COMPOSING_TOOLS)
    return sign_output(image, fmt, claim, inputs, credentials)


def model_label(model: dict[str, Any] | str | None, tier: str | None = None) -> str | None:
    """A model's name for a manifest: the catalogue name or hub id; a local folder by its name only (the
    full path is this machine's business)."""
    if model is None or isinstance(model, str):
        return model
    if model.get("name"):
        return str(model["name"])
    source = str(model.get("source") or "")
    if model.get("kind") == "hosted":
        return f"FLUX.1 Kontext [{tier}] on the BFL API" if tier else "FLUX.1 Kontext on the BFL API"
    if model.get("kind") in ("folder", "single_file", "local") or source.startswith(("/", ".", "~")):
        return Path(source).name or None
    return source or None


def claim_for_recipe(recipe: dict[str, Any], title: str | None = None) -> ContentClaim:
    """The claim of an engine output, from its recipe: an AI edit of its first reference by the model."""
    params = {k: recipe[k] for k in ("tier", "seed", "steps", "guidance") if recipe.get(k) is not None}
    model = recipe.get("model")
    if isinstance(model, dict) and model.get("fingerprint"):
        params["model_fingerprint"] = model["fingerprint"]
    return ContentClaim(action="c2pa.edited", model=model_label(model, recipe.get("tier")), ai=True,
                        description=recipe.get("instruction"), parameters=params, title=title)


def sign_saved_edit(path: Path, recipe: dict[str, Any], references: Sequence[Any],
                    warnings: list[str] | None = None) -> SignedOutput:
    """Sign an engine output just written with its recipe; a note is added to ``warnings`` when it could
    not be signed. ``references`` are the request's references (anything with an ``image``)."""
    ingredients = []
    for i, ref in enumerate(references):
        source = getattr(ref, "image", ref)
        try:
            ingredients.append(Ingredient.from_source(source, f"reference {i + 1}" if not isinstance(
                source, str | Path) else None))
        except OSError:  # a reference file moved since the edit: the manifest names what it can
            logger.info("reference %s could not be read again for the manifest", source)
    result = sign_file(path, claim_for_recipe(recipe, Path(path).name), ingredients)
    if result.note and warnings is not None and result.note not in warnings:
        warnings.append(result.note)
    return result
