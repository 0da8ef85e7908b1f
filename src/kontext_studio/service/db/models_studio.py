"""Web studio tables (edit sessions and the like); created by migration 0003."""

from __future__ import annotations
