"""The shapes every tool shares: typed parameters with limits, the tool's description, its result and errors.

A tool's parameters are a frozen dataclass whose fields carry their limits (``param(...)``); the same
description drives validation in the library, the CLI's options and the API's form fields, so the three faces
can never disagree about a range or a default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from kontext_studio.core.errors import InvalidImage, InvalidRequest, KontextError

__all__ = [
    "AUTO",
    "Limits",
    "Param",
    "ToolImageError",
    "ToolInput",
    "ToolModelMissing",
    "ToolParams",
    "ToolResult",
    "ToolSpec",
    "UnknownTool",
    "param",
]

AUTO = "auto"  # what a user types for an optional value the tool works out itself

PARAM_KINDS = ("int", "float", "str", "bool", "choice", "color")


class UnknownTool(InvalidRequest):
    """No tool has that name."""

    code = "unknown_tool"
    http_status = 404


class ToolImageError(InvalidImage):
    """An input image the tool cannot take: wrong format, too large for this tool, or a mask of another size."""

    code = "invalid_image"


class ToolModelMissing(KontextError):
    """The tool's model files are not installed here; the message says how to install them."""

    code = "tool_model_missing"
    exit_code = 3
    http_status = 503


@dataclass(frozen=True)
class Param:
    """One parameter as the faces show it.

    Attributes:
        name: the field name (``snake_case``; the CLI shows it as ``--kebab-case``).
        kind: int, float, str, bool, choice or color (``#rrggbb`` or a colour name).
        default: the value when the caller gives none (None: optional, the tool decides).
        help: one sentence for people.
        minimum, maximum: inclusive numeric range (int/float), or the length range of a str.
        choices: the allowed values of a ``choice``.
        auto: whether ``"auto"`` (None) is accepted, meaning "let the tool work it out".
    """

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    auto: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if v not in (None, ()) or k == "default"}

    def parse(self, raw: Any) -> Any:
        """Turn a value from any face (str from a form or the CLI, or a JSON value) into the typed value.

        Raises:
            InvalidRequest: naming the parameter, the bad value and what is allowed.
        """
        if raw is None or (self.auto and isinstance(raw, str) and raw.strip().lower() in (AUTO, "")):
            return None if self.auto else self.default
        value: Any
        try:
            if self.kind == "int":
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError
                value = int(str(raw).strip()) if isinstance(raw, str) else int(raw)
            elif self.kind == "float":
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            elif self.kind == "bool":
                if isinstance(raw, bool):
                    value = raw
                elif str(raw).strip().lower() in ("1", "true", "yes", "on"):
                    value = True
                elif str(raw).strip().lower() in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise ValueError
            elif self.kind == "color":
                from PIL import ImageColor

                value = str(raw).strip()
                ImageColor.getrgb(value)
            else:
                value = str(raw) if not isinstance(raw, str) else raw
        except (ValueError, TypeError):
            raise InvalidRequest(f"{self.name} must be {self._describe()}; got {raw!r}", field=self.name) from None
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        """Check a typed value against the limits.

        Raises:
            InvalidRequest: out of range or not one of the choices.
        """
        if value is None:
            if self.auto or self.default is None:
                return
            raise InvalidRequest(f"{self.name} is required: {self._describe()}", field=self.name)
        if self.kind == "choice" and value not in self.choices:
            raise InvalidRequest(f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}",
                                 field=self.name)
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"{self.name} must be {self._describe()}; got {value!r}", field=self.name)
            if (self.minimum is not None and value < self.minimum) or \
                    (self.maximum is not None and value > self.maximum):
                raise InvalidRequest(f"{self.name} must be {self._describe()}; got {value!r}", field=self.name)
        if self.kind == "str":
            if not isinstance(value, str):
                raise InvalidRequest(f"{self.name} must be text; got {value!r}", field=self.name)
            if (self.minimum is not None and len(value) < self.minimum) or \
                    (self.maximum is not None and len(value) > self.maximum):
                raise InvalidRequest(f"{self.name} must be {self._describe()}; got {len(value)} characters",
                                     field=self.name)
        if self.kind == "color":
            from PIL import ImageColor

            try:
                ImageColor.getrgb(str(value))
            except ValueError:
                raise InvalidRequest(f"{self.name} must be {self._describe()}; got {value!r}",
                                     field=self.name) from None

    def _describe(self) -> str:
        extra = " or auto" if self.auto else ""
        if self.kind in ("int", "float"):
            noun = "a whole number" if self.kind == "int" else "a number"
            lo = "" if self.minimum is None else f"{self.minimum:g}"
            hi = "" if self.maximum is None else f"{self.maximum:g}"
            return f"{noun} from {lo} to {hi}{extra}" if lo and hi else f"{noun}{extra}"
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}{extra}"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "color":
            return "a colour such as #ff8800 or white"
        if self.minimum is not None or self.maximum is not None:
            return f"text of {self.minimum or 0:g} to {self.maximum:g} characters{extra}"
        return f"text{extra}"


def param(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
          choices: Sequence[str] = (), auto: bool = False, kind: str | None = None) -> Any:
    """A dataclass field of a tool's parameters, with its limits (see :class:`Param`)."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "choices": tuple(choices), "auto": auto,
            "kind": kind}
    return field(default=default, metadata=meta)


_KIND_OF_TYPE = {int: "int", float: "float", str: "str", bool: "bool"}


class ToolParams:
    """Base of every tool's parameter dataclass: checks each field against its limits on construction."""

    _params_cache: ClassVar[dict[type, tuple[Param, ...]]] = {}

    def __post_init__(self) -> None:
        for p in type(self).params():
            p.check(getattr(self, p.name))

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """The fields as :class:`Param` descriptions, in declaration order."""
        if cls not in ToolParams._params_cache:
            hints = typing.get_type_hints(cls)
            out = []
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                meta = f.metadata
                hinted = hints[f.name]
                base = next((t for t in typing.get_args(hinted) if t is not type(None)), hinted)
                kind = meta.get("kind") or ("choice" if meta.get("choices") else _KIND_OF_TYPE.get(base, "str"))
                out.append(Param(f.name, kind, f.default, meta.get("help", ""), meta.get("minimum"),
                                 meta.get("maximum"), meta.get("choices", ()), bool(meta.get("auto"))))
            ToolParams._params_cache[cls] = tuple(out)
        return ToolParams._params_cache[cls]

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Any:
        """Build the parameters from loosely typed values (form fields, CLI strings, JSON).

        Raises:
            InvalidRequest: an unknown name (with the known ones) or a bad value (naming the field).
        """
        known = {p.name: p for p in cls.params()}
        unknown = [k for k in raw if k not in known]
        if unknown:
            names = ", ".join(known) or "none"
            raise InvalidRequest(f"unknown parameter {unknown[0]!r}; this tool takes: {names}", field=unknown[0])
        values = {name: p.parse(raw[name]) for name, p in known.items() if name in raw}
        return cls(**values)


@dataclass(frozen=True)
class Limits:
    """What a tool accepts.

    Attributes:
        max_pixels: largest input (width x height) this tool takes on CPU in reasonable time.
        min_inputs, max_inputs: how many images it takes.
        mask: "none", "optional" or "required" (white = the area the tool works on).
        alpha_out: whether the result may have transparency (then JPEG output is refused).
    """

    max_pixels: int = 50_000_000
    min_inputs: int = 1
    max_inputs: int = 1
    mask: str = "none"
    alpha_out: bool = False


@dataclass
class ToolInput:
    """What a tool runs on: the images (orientation applied), an optional mask (mode L), and the files' bytes
    when the images came from files (the provenance inspector reads manifests from them)."""

    images: list[Image.Image]
    mask: Image.Image | None = None
    sources: list[bytes] = field(default_factory=list)


@dataclass
class ToolResult:
    """A tool's answer.

    Attributes:
        image: the picture made (None for tools that only report, like image info).
        info: facts for people and scripts (sizes, faces found, the quality a compression chose...).
        encoded: when the tool's job is the file itself (convert, compress): the bytes to write as they are.
        format: the format of ``encoded`` (png, jpeg, webp, avif), or the format the tool advises.
        changes_pixels: whether the image differs from the input's pixels (then it is marked as edited).
        params: the parameters the tool ran with (recorded in the output's content credentials).
    """

    image: Image.Image | None
    info: dict[str, Any] = field(default_factory=dict)
    encoded: bytes | None = None
    format: str | None = None
    changes_pixels: bool = True
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolSpec:
    """One tool in the registry.

    Attributes:
        name: stable id (``remove-background``), used in the CLI and ``POST /v1/tools/{name}``.
        title: short label for people.
        description: one or two sentences: what it does and what it keeps.
        category: cut-out, enhance, geometry, file, compose, faces or provenance.
        params_type: the tool's parameter dataclass.
        limits: inputs, mask and size limits.
        run: the tool on validated input and parameters.
        model: which installable model it needs (see :mod:`kontext_studio.tools.models`), if any.
        free: free tools cost no credits.
        pixel_limit: a smaller input limit for some parameter values (the parameters in, pixels out).
    """

    name: str
    title: str
    description: str
    category: str
    params_type: type[ToolParams]
    limits: Limits
    run: Callable[[ToolInput, Any], ToolResult]
    model: str | None = None
    free: bool = True
    pixel_limit: Callable[[Any], int] | None = None

    @property
    def params(self) -> tuple[Param, ...]:
        return self.params_type.params()

    def default_params(self) -> ToolParams | None:
        """The parameters with every default (None when the tool has a required one)."""
        try:
            return self.params_type()
        except KontextError:  # a tool with a required parameter: its general limit
            return None

    def max_pixels(self, params: ToolParams | None = None) -> int:
        """The largest input for these parameters (a slow mode of a tool may take less than its fast one)."""
        if params is not None and self.pixel_limit is not None:
            return min(self.limits.max_pixels, self.pixel_limit(params))
        return self.limits.max_pixels

    def as_dict(self) -> dict[str, Any]:
        lim = self.limits
        return {"name": self.name, "title": self.title, "description": self.description, "category": self.category,
                "free": self.free, "credits": 0, "model": self.model,
                "inputs": {"min": lim.min_inputs, "max": lim.max_inputs}, "mask": lim.mask,
                "max_pixels": self.max_pixels(self.default_params()), "transparent_output": lim.alpha_out,
                "params": [p.as_dict() for p in self.params]}
