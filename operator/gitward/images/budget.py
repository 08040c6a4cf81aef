"""How much time and how many bytes one image may cost the operator, whatever a registry does.

A registry is reached from a tenant's manifests, so it may be slow, huge or hostile.
Every read from it is bounded by an :class:`ImageBudget`, and everything done for one
image (resolving its tag, fetching its signatures) shares one :class:`Deadline`. Pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class ImageBudget:
    """Limits on the registry traffic for one image."""

    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 15.0  # between two reads of the same response
    seconds_per_image: float = 60.0  # everything for one image: tag, manifest, signatures, tokens
    max_manifest_bytes: int = 4 * MIB  # an image manifest or index, or a signature manifest
    max_payload_bytes: int = 64 * KIB  # one simple-signing payload (cosign's are a few hundred bytes)
    max_token_bytes: int = 256 * KIB  # a bearer token response
    max_signature_layers: int = 16  # signature layers looked at per image; later ones are ignored
    max_redirects: int = 3  # blob downloads only; manifests are never fetched from a redirect


@dataclass(slots=True)
class Deadline:
    """The moment the work for one image must be over; ``clock`` is injectable for tests."""

    seconds: float
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    ends_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.ends_at = self.clock() + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.ends_at - self.clock())

    @property
    def expired(self) -> bool:
        """Whether no time is left."""
        return self.remaining() <= 0.0

    def bound(self, timeout: float) -> float:
        """``timeout`` shortened to the time left (at least a millisecond, so a socket call fails fast)."""
        return max(0.001, min(timeout, self.remaining()))
