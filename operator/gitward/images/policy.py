"""``images.policy``: may these manifests run these images at all? Decided before any registry is contacted.

Pure over the rendered manifests and the tenant's :class:`~gitward.api.resources.ImagePolicy`.
The registry host of an image comes from the tenant's repository, so nothing about an
image may reach the network until the admin's repository globs have allowed it: this is
the gate's defence against the operator being used to probe hosts (SSRF). Every image of
every object is checked, and the error lists all violations, with the reason of the first.

Repository globs are matched against the normalised ``registry/repository`` (``nginx`` is
``docker.io/library/nginx``), one ``/``-separated segment at a time:

- ``*`` matches any run of characters inside one segment, never a ``/``;
- ``?`` matches one character other than ``/``;
- ``**`` as the whole last segment matches one or more further segments, so
  ``ghcr.io/acme/**`` allows ``ghcr.io/acme/web`` and ``ghcr.io/acme/team/web`` (but not
  ``ghcr.io/acme`` itself, nor ``ghcr.io/acme-evil/web``);
- everything else is literal and case-sensitive (no character classes).

A pattern that :func:`glob_problem` finds fault with matches nothing: it fails closed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.api.resources import ImagePolicy, TagPolicy
from gitward.errors import Stalled
from gitward.images.refs import (
    DEFAULT_REGISTRY,
    LEGACY_DEFAULT_REGISTRY,
    ImageField,
    ImageRef,
    InvalidImageReferenceError,
    image_fields,
    parse_image_ref,
)
from gitward.render.manifests import Manifest

MAX_LISTED = 50
ANY_DEPTH = "**"


@dataclass(frozen=True, slots=True)
class ImageViolation:
    """One reason one image of one object may not be deployed."""

    reason: Reason
    manifest: Manifest
    location: str  # spec.template.spec.containers[0].image
    detail: str

    def __str__(self) -> str:
        return f"{self.manifest.describe}: {self.location}: [{self.reason}] {self.detail}"


class ImageViolations(Stalled):
    """Every image violation of a commit; the condition reason is that of the first."""

    def __init__(self, violations: Sequence[ImageViolation], *, notes: Sequence[str] = ()) -> None:
        shown = "; ".join(str(v) for v in violations[:MAX_LISTED])
        more = f"; and {len(violations) - MAX_LISTED} more" if len(violations) > MAX_LISTED else ""
        also = f"; also: {'; '.join(notes)}" if notes else ""
        super().__init__(violations[0].reason, f"{len(violations)} image violation(s): {shown}{more}{also}")
        self.violations = tuple(violations)


@dataclass(frozen=True, slots=True)
class ImageUse:
    """An image the policy admitted: which object holds it, where, and the parsed reference."""

    manifest_index: int  # position in the manifests given to the gate
    manifest: Manifest
    field: ImageField
    ref: ImageRef


def glob_problem(pattern: str) -> str | None:  # noqa: PLR0911 - one answer per check, in order
    """What is wrong with a repository glob, or None. A faulty glob never matches anything."""
    if not pattern or pattern != pattern.strip() or any(c.isspace() for c in pattern):
        return "a repository glob is a non-empty string without spaces"
    segments = pattern.split("/")
    if len(segments) < 2 or "" in segments:  # noqa: PLR2004 - a host and at least one path segment
        return f"{pattern!r}: write registry/repository, with no empty segment"
    if any(ANY_DEPTH in s and (s != ANY_DEPTH or i != len(segments) - 1) for i, s in enumerate(segments)):
        return f"{pattern!r}: '**' is allowed only as the whole last segment"
    host = segments[0]
    if "." not in host and ":" not in host and host != "localhost":
        return f"{pattern!r}: the first segment must be the registry host (docker.io, ghcr.io, host:port)"
    if host == LEGACY_DEFAULT_REGISTRY:
        return f"{pattern!r}: Docker Hub images are named docker.io/..., not index.docker.io/..."
    if host == DEFAULT_REGISTRY and len(segments) == 2 and ANY_DEPTH not in segments:  # noqa: PLR2004
        return (
            f"{pattern!r} never matches: Docker Hub official images are docker.io/library/<name>, "
            "other images docker.io/<owner>/<name>"
        )
    return None


def _segment(segment: str) -> str:
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in segment)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    if glob_problem(pattern) is not None:
        return None
    segments = pattern.split("/")
    if segments[-1] == ANY_DEPTH:
        return re.compile("/".join(_segment(s) for s in segments[:-1]) + "(?:/[^/]+)+")
    return re.compile("/".join(_segment(s) for s in segments))


def repository_allowed(name: str, patterns: Sequence[str]) -> bool:
    """Whether a normalised ``registry/repository`` matches one of the tenant's globs."""
    for pattern in patterns:
        compiled = _compiled(pattern)
        if compiled is not None and compiled.fullmatch(name):
            return True
    return False


def _field_violation(manifest: Manifest, field: ImageField, policy: ImagePolicy) -> ImageViolation | ImageRef:
    def violation(reason: Reason, detail: str) -> ImageViolation:
        return ImageViolation(reason, manifest, field.location, detail)

    if field.image is None:
        return violation(Reason.IMAGE_NOT_ALLOWED, field.problem)
    try:
        ref = parse_image_ref(field.image)
    except InvalidImageReferenceError as error:
        return violation(
            Reason.IMAGE_NOT_ALLOWED, f"{field.image[:300]!r} is not a valid image reference: {error}"
        )
    if not repository_allowed(ref.name, policy.repositories):
        return violation(
            Reason.IMAGE_NOT_ALLOWED,
            f"{ref.name} (from {field.image!r}) matches none of the tenant's image repositories",
        )
    if not ref.pinned and policy.tags is TagPolicy.FORBID:
        return violation(
            Reason.IMAGE_NOT_PINNED,
            f"{field.image!r} names a tag, not a digest; the tenant deploys only image@sha256:... references",
        )
    return ref


def check_policy(manifests: Sequence[Manifest], policy: ImagePolicy) -> list[ImageUse]:
    """Every image the manifests would run, admitted; or raise :class:`ImageViolations` listing all refusals.

    Pure: no registry is contacted, whatever the manifests say.
    """
    uses: list[ImageUse] = []
    violations: list[ImageViolation] = []
    for index, manifest in enumerate(manifests):
        for field in image_fields(manifest.obj):
            outcome = _field_violation(manifest, field, policy)
            if isinstance(outcome, ImageViolation):
                violations.append(outcome)
            else:
                uses.append(ImageUse(index, manifest, field, outcome))
    if violations:
        raise ImageViolations(violations)
    return uses
