"""Helpers shared by the test tiers (importable because pytest puts tests/ on sys.path)."""
