"""LoRA training runs and user LoRAs; created by migration 0004."""

from __future__ import annotations
