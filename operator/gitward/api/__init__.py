"""The API contract of group ``gitward.dev``: resources, conditions and reasons.

Plain data only (no I/O), so every other layer can depend on it and every
name users and alerts rely on is declared exactly once.
"""
