"""One exception tree for the engine; every face (CLI, HTTP) maps these to exit codes or statuses."""

from __future__ import annotations


class KontextError(Exception):
    """Base of every error the engine raises on purpose. ``code`` is stable for scripts and APIs."""

    code = "kontext_error"
    exit_code = 1


class InvalidRequest(KontextError):
    """The request itself is wrong: the message names the field, the value and the fix."""

    code = "invalid_request"
    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class InvalidImage(InvalidRequest):
    """An input file is not a usable image (unreadable, empty, too large)."""

    code = "invalid_image"


class UnsupportedTier(InvalidRequest):
    """The tier name is not registered."""

    code = "unknown_tier"


class TierNotConfigured(KontextError):
    """The tier exists but this installation cannot run it yet (missing key or backend)."""

    code = "tier_not_configured"
    exit_code = 3


class WeightsNotFound(KontextError):
    """The model weights are not where the configuration points; the message says how to get them."""

    code = "weights_not_found"
    exit_code = 3


class LoraError(InvalidRequest):
    """A LoRA file could not be read or does not fit the model."""

    code = "invalid_lora"


class RecipeError(InvalidRequest):
    """An output carries no readable recipe, or its inputs cannot be found to replay it."""

    code = "invalid_recipe"


class Canceled(KontextError):
    """The edit was canceled by its caller; no image was produced."""

    code = "canceled"
    exit_code = 130
