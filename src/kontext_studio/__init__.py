"""Kontext Studio: reference-image editing on FLUX.1 Kontext.

Importing the package is cheap: torch and diffusers load only when an engine backend is built.
"""

from kontext_studio.core.types import EditRequest, EditResult, Reference

__all__ = ["EditRequest", "EditResult", "Reference"]
__version__ = "0.1.0"
