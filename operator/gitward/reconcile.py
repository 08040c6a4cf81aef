"""The reconcile pipeline, as a short list of steps (see DESIGN.md).

Each step is a function with a typed result that fails with a typed error
carrying a condition reason; none of them knows about kopf. This module
holds the source half of the pipeline, which decides whether a commit may
be used at all; rendering, policy, apply and history follow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitward.source import git
from gitward.tenants.resolve import Reader, ResolvedApp, resolve
from gitward.trust.verify import VerifiedSource, verify


def verified_source(
    app: Mapping[str, Any],
    *,
    reader: Reader,
    fetch_options: git.FetchOptions,
    last_applied: str | None,
) -> tuple[ResolvedApp, VerifiedSource]:
    """Resolve the tenant policy, fetch the allowed branch, verify its new commits."""
    resolved = resolve(app, reader=reader, allow_file=fetch_options.allow_file_transport)
    checkout = git.fetch(
        resolved.source, app_uid=resolved.uid, credentials=resolved.credentials, options=fetch_options
    )
    repo = git.Repository(checkout.repo, options=fetch_options)
    verified = verify(checkout, repo, last_applied=last_applied, settings=resolved.trust, keys=resolved.keys)
    return resolved, verified
