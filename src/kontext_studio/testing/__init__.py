"""Offline test bed: a tiny FLUX.1 Kontext pipeline built from the real diffusers classes.

Random weights: for tests and dry runs only, never for real edits.
"""
