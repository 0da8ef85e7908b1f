"""Backends turn a planned generation into pixels: diffusers (local), BFL API (remote), fake (tests)."""
