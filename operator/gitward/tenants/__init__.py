"""Resolving an app against its tenant: the first step of the pipeline."""
