"""Which rendered objects are hooks (test Jobs run after health), and which hook annotations are refused.

Pure, so the policy step can refuse a malformed hook with every other violation of the commit;
running the tests is :mod:`gitward.apply.testjobs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gitward.render.manifests import Manifest

HOOK_ANNOTATION: Final = "gitward.dev/hook"
TEST_HOOK: Final = "test"


def is_test(obj: Mapping[str, Any]) -> bool:
    """Whether a rendered object is a test hook (whatever its kind: :func:`hook_problem` refuses non-Jobs)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return isinstance(annotations, Mapping) and annotations.get(HOOK_ANNOTATION) == TEST_HOOK


def hook_problem(manifest: Manifest) -> str | None:
    """Why an object with the hook annotation cannot be a test, or None if it can (or is no hook)."""
    annotations = (manifest.obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(HOOK_ANNOTATION) if isinstance(annotations, Mapping) else None
    if value is None:
        return None
    if value != TEST_HOOK:
        return f"{HOOK_ANNOTATION}: {value!r} is not a hook gitward runs (only {TEST_HOOK!r})"
    if (manifest.group, manifest.kind) != ("batch", "Job"):
        return f"{HOOK_ANNOTATION}: {TEST_HOOK} is for Jobs (batch/v1), not {manifest.kind}"
    return None
