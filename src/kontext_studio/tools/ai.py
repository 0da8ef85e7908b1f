"""One-click AI tools: preset instructions for the edit engine, for jobs no offline model does well.

Each preset is a prompt template that follows the editing advice the engine's prompt coach gives: say the
change precisely, then say what must stay the same. The instruction it makes is an ordinary edit: it runs on
any catalogue model that edits (every Kontext tier, FLUX.2, Qwen-Image-Edit), goes through the normal
prediction path and costs exactly what an edit on that model costs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.tools.base import Param, ToolParams, param


@dataclass(frozen=True)
class RestoreParams(ToolParams):
    colorize: bool = param(False, "Also bring back natural colour.")


@dataclass(frozen=True)
class ColorizeParams(ToolParams):
    hint: str = param("", "Optional colours to use, e.g. 'a red dress, green trees'.", maximum=200)


@dataclass(frozen=True)
class RelightParams(ToolParams):
    light: str = param("soft golden-hour sunlight from the left", "The light you want, in words.", minimum=3,
                       maximum=200)


@dataclass(frozen=True)
class RemoveObjectParams(ToolParams):
    object: str | None = param(None, "What to remove, e.g. 'the man in the background', 'the power lines'.",
                               minimum=2, maximum=200)


@dataclass(frozen=True)
class BackgroundParams(ToolParams):
    background: str | None = param(None, "The new background in words, e.g. 'a sunny beach with palm trees'.",
                                   minimum=3, maximum=300)


@dataclass(frozen=True)
class HeadshotAiParams(ToolParams):
    attire: str = param("a dark business suit", "What the person wears.", minimum=3, maximum=200)
    backdrop: str = param("plain light grey", "The studio backdrop.", minimum=3, maximum=200)


@dataclass(frozen=True)
class ProductParams(ToolParams):
    surface: str = param("a white marble countertop", "Where the product stands.", minimum=3, maximum=200)
    light: str = param("soft natural window light", "The light.", minimum=3, maximum=200)


@dataclass(frozen=True)
class AiTool:
    """A preset instruction.

    Attributes:
        name, title, description: as for the free tools.
        params_type: what the user fills in.
        change: the change, a template over the parameters (``{object}``).
        keep: what must stay the same (said every time: it is what keeps the person or product intact).
    """

    name: str
    title: str
    description: str
    params_type: type[ToolParams]
    change: str
    keep: str

    def instruction(self, params: ToolParams) -> str:
        """The edit instruction for these parameters."""
        values = {f.name: getattr(params, f.name) for f in fields(params)}  # type: ignore[arg-type]
        change = self.change.format(**values)  # user text is inserted, never parsed as a template
        if self.name == "colorize":
            change += f", using {values['hint']}" if values.get("hint", "").strip() else ""
        if self.name == "restore-photo" and values.get("colorize"):
            change += " and colorize it with natural, realistic colours"
        return f"{change}. {self.keep}"

    def build(self, raw: dict[str, Any] | None) -> str:
        """Parse loosely typed parameters and return the instruction.

        Raises:
            InvalidRequest: an unknown or bad parameter, or a required text left empty.
        """
        params = self.params_type.from_raw(raw or {})
        for p in self.params_type.params():
            if p.kind == "str" and p.minimum and not (getattr(params, p.name) or "").strip():
                raise InvalidRequest(f"{self.name} needs {p.name}: {p.help}", field=p.name)
        return self.instruction(params)

    @property
    def params(self) -> tuple[Param, ...]:
        return self.params_type.params()

    def as_dict(self, prices: dict[str, int]) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description, "free": False,
                "kind": "ai", "credits": prices, "params": [p.as_dict() for p in self.params],
                "example_instruction": self.instruction(self.params_type()) if all(
                    p.default is not None for p in self.params) else None}


AI_TOOLS: dict[str, AiTool] = {t.name: t for t in (
    AiTool("restore-photo", "Restore old photo", "Remove scratches, dust and creases, revive faded tones.",
           RestoreParams,
           "Restore this old photograph: remove the scratches, dust, creases and stains, repair torn corners, "
           "recover faded contrast and sharpen soft detail",
           "Keep the same people, faces, expressions, poses, clothing and composition exactly as they are, "
           "with no new objects."),
    AiTool("colorize", "Colorize", "Give a black-and-white photo natural colour.", ColorizeParams,
           "Colorize this black-and-white photograph with natural, realistic, period-appropriate colours",
           "Keep every face, expression, pose, the lighting and the composition exactly the same; change only "
           "the colours."),
    AiTool("relight", "Relight", "Change the light on the scene.", RelightParams,
           "Relight the scene with {light}, with matching shadows and highlights",
           "Keep the subject's identity, face, pose, expression, clothing and the composition unchanged; change "
           "only the lighting."),
    AiTool("remove-object-by-name", "Remove object by name", "Say what to remove; the model finds and fills it.",
           RemoveObjectParams,
           "Remove {object} from the picture and fill the area naturally with the background around it",
           "Keep everything else exactly the same: the people, their faces and poses, the other objects, the "
           "framing and the lighting."),
    AiTool("change-background", "Change background by description", "Describe the new background in words.",
           BackgroundParams,
           "Change the background to {background}",
           "Keep the subject exactly the same: the same face, identity, pose, clothing and framing, lit to match "
           "the new background."),
    AiTool("professional-headshot", "Professional headshot", "A studio headshot from a casual photo.",
           HeadshotAiParams,
           "Turn this into a professional headshot: the person wearing {attire}, in front of a {backdrop} "
           "studio backdrop, with soft flattering studio light, head and shoulders framed",
           "Keep the person's face, identity, facial features, skin tone, hairstyle and expression exactly the "
           "same."),
    AiTool("product-surface", "Product on a new surface", "Place a product on another surface for a shop photo.",
           ProductParams,
           "Place the product on {surface}, lit by {light}, with a natural contact shadow",
           "Keep the product exactly the same: its shape, colours, label text and logo unchanged and legible."),
)}


def get_ai_tool(name: str) -> AiTool | None:
    """The AI tool of that name, or None."""
    return AI_TOOLS.get(name) or AI_TOOLS.get(name.replace("_", "-"))
