"""Tenant policy over rendered objects: pure functions, every violation reported."""
