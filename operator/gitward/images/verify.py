"""``images.verify``: the image gate of the deploy pipeline, in the order that keeps it safe.

1. The pure policy (:func:`~gitward.images.policy.check_policy`): every image's registry
   and repository must match the tenant's globs, and be pinned by digest unless tags
   are resolved. Nothing touches the network before this has passed, so a manifest
   cannot make the operator contact a host the admin did not allow.
2. Tags are resolved to digests (``tags: resolve``) through the registry client, and the
   manifests come back rewritten to ``<image as written>@sha256:...``: the name and tag
   a person wrote stay readable, and the runtime pulls the digest alone.
3. When the tenant names keys, every distinct digest must carry a cosign signature by
   one of them (:mod:`gitward.images.cosign`). All unsigned images are listed together.
4. The verdict lists, for the record, each image as written, its digest and the
   fingerprint of the key that verified it.

Verifications are remembered in a :class:`VerificationCache` shared by all apps: keyed
by repository, digest and the tenant's key fingerprints, so 1000 apps running one image
verify it once (and concurrent apps wait for the one verification in flight rather than
repeat it). A refusal is remembered only briefly (``refusal_seconds``, 30 s by default):
long enough that a burst of apps on one unsigned image costs one registry round trip,
short enough that a signature pushed after the image is seen on the next attempt.
Registry failures (``Waiting``) are not remembered at all.

Everything here is plain orchestration: the only I/O is through the client it is given.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gitward.api.conditions import Reason
from gitward.api.resources import ImagePolicy, TagPolicy
from gitward.errors import Waiting
from gitward.images.budget import Deadline
from gitward.images.cosign import SignatureOutcome, SignatureVerdict, SignedPayload, verify_signatures
from gitward.images.keys import TrustedImageKeys
from gitward.images.policy import ImageUse, ImageViolation, ImageViolations, check_policy
from gitward.images.refs import ImageRef, Path, replace_images
from gitward.render.manifests import Manifest

__all__ = [
    "ImageVerdict",
    "RegistryReader",
    "TrustedImageKeys",
    "VerificationCache",
    "VerifiedImage",
    "check_images",
    "registry_needed",
]


class RegistryReader(Protocol):
    """What the gate needs from a registry client (:class:`gitward.images.registry.RegistryClient`)."""

    def deadline(self) -> Deadline:
        """A fresh deadline for the work on one image."""
        ...

    def resolve(self, ref: ImageRef, *, deadline: Deadline | None = None) -> str:
        """The digest of the manifest the registry serves for ``ref`` (checked, for a digest reference)."""
        ...

    def signatures(
        self, ref: ImageRef, digest: str, *, deadline: Deadline | None = None
    ) -> list[SignedPayload]:
        """The cosign signature layers of ``digest`` in ``ref``'s repository."""
        ...


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """One image of the commit, for the record: as written, the digest deployed, and who signed it."""

    image: str
    digest: str
    key_fingerprint: str | None = None  # None when the tenant requires no signature
    signed_reference: str | None = None  # the docker-reference the signer claimed, if any


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    """The manifests to deploy (images pinned where tags were resolved) and what was verified."""

    manifests: tuple[Manifest, ...]
    images: tuple[VerifiedImage, ...]


CacheKey = tuple[str, str, frozenset[str]]  # (registry/repository, digest, trusted key fingerprints)


@dataclass(frozen=True, slots=True)
class _Entry:
    verdict: SignatureVerdict
    expires_at: float


class VerificationCache:
    """Signature verdicts by (repository, digest, key fingerprints): bounded, LRU, thread-safe.

    Verified verdicts live ``verified_seconds``, refusals ``refusal_seconds``; neither
    outlives ``max_entries`` newer ones. Work for one key is done once at a time: a
    second thread asking for it waits for the first one's verdict.
    """

    def __init__(
        self,
        *,
        max_entries: int = 4096,
        verified_seconds: float = 3600.0,
        refusal_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.verified_seconds = verified_seconds
        self.refusal_seconds = refusal_seconds
        self._clock = clock
        self._entries: collections.OrderedDict[CacheKey, _Entry] = collections.OrderedDict()
        self._in_flight: dict[CacheKey, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """How many verdicts are remembered (expired ones included until next looked up)."""
        with self._lock:
            return len(self._entries)

    def get(self, key: CacheKey) -> SignatureVerdict | None:
        """The remembered verdict, if it has not expired."""
        with self._lock:
            return self._get(key)

    def _get(self, key: CacheKey) -> SignatureVerdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.verdict

    def put(self, key: CacheKey, verdict: SignatureVerdict) -> None:
        """Remember a verdict (for its kind's lifetime), dropping the least recently used beyond the bound."""
        lifetime = self.verified_seconds if verdict.verified else self.refusal_seconds
        with self._lock:
            if lifetime <= 0:
                self._entries.pop(key, None)
                return
            self._entries[key] = _Entry(verdict, self._clock() + lifetime)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def verdict(
        self, key: CacheKey, verify: Callable[[], SignatureVerdict], *, wait_seconds: float
    ) -> SignatureVerdict:
        """The remembered verdict, or ``verify()``'s, computed by one thread at a time per key.

        If ``verify`` raises (a registry failure) nothing is remembered and the error
        propagates; a thread that was waiting then tries itself.
        """
        while True:
            with self._lock:
                remembered = self._get(key)
                if remembered is not None:
                    return remembered
                event = self._in_flight.get(key)
                if event is None:
                    event = self._in_flight[key] = threading.Event()
                    leader = True
                else:
                    leader = False
            if not leader:
                if not event.wait(wait_seconds):
                    return verify()  # the other thread is stuck: do not wait past this image's budget
                continue
            try:
                verdict = verify()
                self.put(key, verdict)
                return verdict
            finally:
                with self._lock:
                    self._in_flight.pop(key, None)
                event.set()


def registry_needed(policy: ImagePolicy) -> bool:
    """Whether the gate will contact registries under this policy (tags resolved, or signatures required).

    When it will not, no registry client (nor its Secret and CA) is needed: pass any client.
    """
    return policy.tags is TagPolicy.RESOLVE or bool(policy.keys_from)


GATE_SECONDS = 120.0  # all the registry work of one commit, whatever the number of images


class _Gate:
    """What bounds one commit's registry work: a total deadline, and no second try at a failed registry.

    Each image has its own deadline too; without a total, a slow registry the admin allowed
    would hold a worker for that deadline times the number of images, on every retry.
    """

    def __init__(self, client: RegistryReader, seconds: float) -> None:
        self.client = client
        self.total = Deadline(seconds)
        self.down: set[str] = set()
        self.seconds = seconds

    def refusal(self, ref: ImageRef) -> Waiting | None:
        """Why ``ref``'s registry is not asked at all in this attempt, or None."""
        if ref.registry in self.down:
            return Waiting(
                Reason.IMAGE_UNAVAILABLE,
                f"registry {ref.registry}: not asked about {ref.name}: it failed already",
            )
        if self.total.expired:
            return Waiting(
                Reason.IMAGE_UNAVAILABLE,
                f"the images' time budget of {self.seconds:g}s ran out before {ref.name} was checked",
            )
        return None

    def deadline(self) -> Deadline:
        """One image's deadline, never past the gate's."""
        deadline = self.client.deadline()
        deadline.ends_at = min(deadline.ends_at, self.total.ends_at)
        return deadline


def _pin_uses(
    uses: Sequence[ImageUse], gate: _Gate, deadlines: dict[str, Deadline]
) -> tuple[dict[int, str], list[Waiting]]:
    """Resolve every distinct tag once: digest by use index, and the registry failures."""
    digests: dict[str, str] = {}
    failures: list[Waiting] = []
    by_use: dict[int, str] = {}
    for index, use in enumerate(uses):
        ref = use.ref
        if ref.digest is not None:
            by_use[index] = ref.digest
            continue
        target = str(ref)
        if target not in digests and target not in deadlines:
            if (refused := gate.refusal(ref)) is not None:
                failures.append(refused)
                continue
            deadlines[target] = gate.deadline()
            try:
                digests[target] = gate.client.resolve(ref, deadline=deadlines[target])
            except Waiting as error:
                gate.down.add(ref.registry)
                failures.append(error)
        if target in digests:
            by_use[index] = digests[target]
    return by_use, failures


def _unusable_keys(keys: TrustedImageKeys) -> SignatureVerdict:
    problems = "; ".join(keys.problems[:5]) or "the keysFrom ConfigMaps hold no public key"
    return SignatureVerdict(
        SignatureOutcome.UNTRUSTED, detail=f"the tenant has no usable image key: {problems}"
    )


def check_images(
    manifests: Sequence[Manifest],
    policy: ImagePolicy,
    *,
    client: RegistryReader,
    trusted_keys: TrustedImageKeys | None,
    cache: VerificationCache,
    gate_seconds: float = GATE_SECONDS,
    uses: Sequence[ImageUse] | None = None,
) -> ImageVerdict:
    """Run the image gate over a commit's rendered manifests (see the module's steps).

    Raises :class:`~gitward.images.policy.ImageViolations` (``Stalled``) listing every
    violation — policy ones before any network access, then every unsigned image — or,
    when nothing is refused but a registry could not answer,
    :class:`~gitward.errors.Waiting` with reason ``ImageUnavailable`` naming each one.
    ``uses`` is what :func:`~gitward.images.policy.check_policy` returned for these manifests, when
    the caller ran it first (to read the registry's settings only for a commit that passed it).
    """
    if uses is None:
        uses = check_policy(manifests, policy)
    if not uses:
        return ImageVerdict(tuple(manifests), ())
    keys = trusted_keys or TrustedImageKeys()
    signatures_required = bool(policy.keys_from)
    if signatures_required and keys.empty:
        verdict = _unusable_keys(keys)
        raise ImageViolations([_unsigned(use, str(verdict)) for use in uses])
    deadlines: dict[str, Deadline] = {}
    gate = _Gate(client, gate_seconds)
    digest_of_use, failures = _pin_uses(uses, gate, deadlines)
    verdicts: dict[tuple[str, str], SignatureVerdict] = {}
    violations: list[ImageViolation] = []
    for index, use in enumerate(uses):
        digest = digest_of_use.get(index)
        if digest is None or not signatures_required:
            continue
        target = (use.ref.name, digest)
        if target not in verdicts:
            key = (use.ref.name, digest, keys.fingerprints)
            known = cache.get(key)
            if known is not None:
                verdicts[target] = known
            else:
                if (refused := gate.refusal(use.ref)) is not None:
                    failures.append(refused)
                    continue
                deadline = deadlines.get(str(use.ref)) or gate.deadline()
                try:
                    verdicts[target] = cache.verdict(
                        key,
                        functools.partial(_verify, client, use.ref, digest, keys, deadline),
                        wait_seconds=deadline.remaining(),
                    )
                except Waiting as error:
                    gate.down.add(use.ref.registry)
                    failures.append(error)
                    continue
        if not verdicts[target].verified:
            violations.append(_unsigned(use, f"{use.ref.name}@{digest}: {verdicts[target]}"))
    if violations:
        raise ImageViolations(violations, notes=[error.message for error in failures])
    if failures:
        raise Waiting(
            Reason.IMAGE_UNAVAILABLE,
            "; ".join(error.message for error in failures),
            retry_after=max(error.retry_after for error in failures),
        )
    return _verdict(manifests, uses, digest_of_use, verdicts)


def _verify(
    client: RegistryReader, ref: ImageRef, digest: str, keys: TrustedImageKeys, deadline: Deadline
) -> SignatureVerdict:
    if ref.digest is not None:
        client.resolve(ref, deadline=deadline)  # the image exists there, and is what its digest says
    return verify_signatures(client.signatures(ref, digest, deadline=deadline), digest=digest, keys=keys)


def _unsigned(use: ImageUse, detail: str) -> ImageViolation:
    return ImageViolation(Reason.IMAGE_UNSIGNED, use.manifest, use.field.location, detail)


def _verdict(
    manifests: Sequence[Manifest],
    uses: Sequence[ImageUse],
    digest_of_use: dict[int, str],
    verdicts: dict[tuple[str, str], SignatureVerdict],
) -> ImageVerdict:
    """The manifests with resolved tags pinned, and one record per distinct (image as written, digest)."""
    replacements: dict[int, dict[Path, str]] = collections.defaultdict(dict)
    records: dict[tuple[str, str], VerifiedImage] = {}
    for index, use in enumerate(uses):
        digest = digest_of_use[index]  # every use has one here: a failed resolve raised before
        if use.ref.digest is None:
            replacements[use.manifest_index][use.field.path] = use.ref.with_digest(digest)
        verdict = verdicts.get((use.ref.name, digest))  # none when the tenant requires no signature
        records.setdefault(
            (use.ref.written, digest),
            VerifiedImage(
                use.ref.written,
                digest,
                verdict.key_fingerprint if verdict else None,
                verdict.claimed_reference if verdict else None,
            ),
        )
    rewritten = tuple(
        dataclasses.replace(manifest, obj=replace_images(manifest.obj, replacements[index]))
        if index in replacements
        else manifest
        for index, manifest in enumerate(manifests)
    )
    return ImageVerdict(rewritten, tuple(records.values()))
