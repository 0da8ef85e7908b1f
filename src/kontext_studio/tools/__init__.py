"""Free editing tools: typed functions on PIL images, a registry describing them as data, one runner.

Importable without torch or the diffusion engine; models (IS-Net, MediaPipe, Real-ESRGAN) load on first use.

    from kontext_studio.tools import run_tool, list_tools
    result = run_tool("remove-background", ["photo.jpg"])
    result.image.save("cut-out.png")
"""

from kontext_studio.tools.base import (
    Limits,
    Param,
    ToolImageError,
    ToolModelMissing,
    ToolParams,
    ToolResult,
    ToolSpec,
    UnknownTool,
)
from kontext_studio.tools.io import encode, format_for, load_image, result_bytes
from kontext_studio.tools.registry import TOOLS, get_tool, list_tools, run_tool

__all__ = [
    "TOOLS",
    "Limits",
    "Param",
    "ToolImageError",
    "ToolModelMissing",
    "ToolParams",
    "ToolResult",
    "ToolSpec",
    "UnknownTool",
    "encode",
    "format_for",
    "get_tool",
    "list_tools",
    "load_image",
    "result_bytes",
    "run_tool",
]
