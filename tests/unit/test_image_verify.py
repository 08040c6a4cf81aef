"""The image gate's order and bookkeeping, over a fake registry client (the real one: tests/integration).

Policy before any network access; tags resolved once and the manifests rewritten to
``as-written@digest``; every distinct digest's signatures verified once, all unsigned
images listed together; verdicts cached by (repository, digest, keys), shared safely
between threads; registry failures retried, never cached.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gitward.api.conditions import Reason
from gitward.api.resources import ImagePolicy, KeyRef, TagPolicy
from gitward.errors import Stalled, Waiting
from gitward.images.budget import Deadline
from gitward.images.cosign import SignatureOutcome, SignatureVerdict, SignedPayload
from gitward.images.keys import TrustedImageKeys, fingerprint
from gitward.images.policy import ImageViolations
from gitward.images.refs import ImageRef
from gitward.images.registry import RegistryUnavailable
from gitward.images.verify import (
    ImageVerdict,
    VerificationCache,
    VerifiedImage,
    check_images,
    registry_needed,
)
from gitward.render.manifests import Manifest


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


WEB = digest_of("web v1")
API = digest_of("api v1")
KEYS = (KeyRef("cosign-keys"),)


def cosign_payload(name: str, digest: str) -> bytes:
    return (
        f'{{"critical":{{"identity":{{"docker-reference":"{name}"}},"image":{{"docker-manifest-digest":"{digest}"}},'
        '"type":"cosign container image signature"},"optional":null}'
    ).encode()


class FakeRegistry:
    """Tags, digests and signatures in memory; every call recorded; failures on demand."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], str] = {}
        self.present: set[tuple[str, str]] = set()
        self.signed: dict[tuple[str, str], list[SignedPayload]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.down: set[str] = set()
        self.hold: threading.Event | None = None  # calls wait here until the test lets them through
        self.lock = threading.Lock()

    def push(self, name: str, tag: str, digest: str) -> None:
        self.tags[(name, tag)] = digest
        self.present.add((name, digest))

    def sign(self, key, name: str, digest: str) -> None:
        payload = cosign_payload(name, digest)
        signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
        self.signed.setdefault((name, digest), []).append(SignedPayload(payload, signature))

    def deadline(self) -> Deadline:
        return Deadline(60.0)

    def _call(self, operation: str, ref: ImageRef, what: str) -> None:
        with self.lock:
            self.calls.append((operation, ref.name, what))
        if ref.registry in self.down:
            raise RegistryUnavailable(ref.registry, f"{operation} {ref}: HTTP 503", retry_after=45.0)
        if self.hold is not None:
            self.hold.wait(10)

    def resolve(self, ref: ImageRef, *, deadline: Deadline | None = None) -> str:  # noqa: ARG002 - the protocol's
        self._call("resolve", ref, ref.reference)
        if ref.digest is not None:
            if (ref.name, ref.digest) not in self.present:
                raise RegistryUnavailable(ref.registry, f"image {ref} not found")
            return ref.digest
        if (ref.name, ref.reference) not in self.tags:
            raise RegistryUnavailable(ref.registry, f"image {ref} not found")
        return self.tags[(ref.name, ref.reference)]

    def signatures(
        self,
        ref: ImageRef,
        digest: str,
        *,
        deadline: Deadline | None = None,  # noqa: ARG002 - the protocol's
    ) -> list[SignedPayload]:
        self._call("signatures", ref, digest)
        return list(self.signed.get((ref.name, digest), []))


class NoNetwork(FakeRegistry):
    def _call(self, operation: str, ref: ImageRef, what: str) -> None:  # noqa: ARG002 - the base's signature
        raise AssertionError(
            f"the registry was contacted for {ref} although the policy should have refused first"
        )


def pod(name: str, *images: str, kind: str = "Deployment") -> Manifest:
    spec = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}
    obj = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"template": {"spec": spec}},
    }
    return Manifest(obj, f"deploy/{name}.yaml", 0)


def keys_of(*private_keys) -> TrustedImageKeys:
    pems = {
        f"k{i}.pub": k.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        for i, k in enumerate(private_keys)
    }
    return TrustedImageKeys.from_config_maps([pems])


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def registry(key):
    fake = FakeRegistry()
    fake.push("ghcr.io/acme/web", "1.0", WEB)
    fake.push("ghcr.io/acme/api", "2.0", API)
    fake.sign(key, "ghcr.io/acme/web", WEB)
    fake.sign(key, "ghcr.io/acme/api", API)
    return fake


def gate(manifests, policy, registry, keys=None, cache=None) -> ImageVerdict:
    return check_images(
        manifests, policy, client=registry, trusted_keys=keys, cache=cache or VerificationCache()
    )


def test_the_policy_refuses_before_any_registry_is_contacted(key):
    """An image from a host the admin did not allow is never fetched: the tenant cannot make the operator probe it."""
    manifests = [
        pod("web", "ghcr.io/acme/web:1.0", "169.254.169.254/latest/meta-data:x", "10.0.0.1:6443/api/v1:x")
    ]
    policy = ImagePolicy(("ghcr.io/acme/*",), TagPolicy.RESOLVE, KEYS)
    with pytest.raises(ImageViolations) as caught:
        gate(manifests, policy, NoNetwork(), keys_of(key))
    assert [v.reason for v in caught.value.violations] == [Reason.IMAGE_NOT_ALLOWED, Reason.IMAGE_NOT_ALLOWED]


def test_pinned_images_without_keys_need_no_registry():
    manifests = [
        pod("web", f"ghcr.io/acme/web@{WEB}"),
        Manifest({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, "s.yaml", 0),
    ]
    verdict = gate(manifests, ImagePolicy(("ghcr.io/acme/*",)), NoNetwork())
    assert verdict.manifests == tuple(manifests)
    assert verdict.images == (VerifiedImage(f"ghcr.io/acme/web@{WEB}", WEB),)


def test_tags_are_resolved_once_and_the_manifests_pinned_as_written(registry):
    manifests = [
        pod("web", "ghcr.io/acme/web:1.0", "ghcr.io/acme/api:2.0"),
        pod("web-canary", "ghcr.io/acme/web:1.0"),
        Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, "c.yaml", 0),
    ]
    verdict = gate(manifests, ImagePolicy(("ghcr.io/acme/*",), TagPolicy.RESOLVE), registry)
    images = [
        c["image"] for m in verdict.manifests[:2] for c in m.obj["spec"]["template"]["spec"]["containers"]
    ]
    assert images == [
        f"ghcr.io/acme/web:1.0@{WEB}",
        f"ghcr.io/acme/api:2.0@{API}",
        f"ghcr.io/acme/web:1.0@{WEB}",
    ]
    assert verdict.manifests[2] is manifests[2]
    assert (
        manifests[0].obj["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/web:1.0"
    )  # untouched
    assert (verdict.manifests[0].file, verdict.manifests[0].document) == ("deploy/web.yaml", 0)
    assert [c for c in registry.calls if c[0] == "resolve"] == [
        ("resolve", "ghcr.io/acme/web", "1.0"),
        ("resolve", "ghcr.io/acme/api", "2.0"),
    ]
    assert verdict.images == (
        VerifiedImage("ghcr.io/acme/web:1.0", WEB),
        VerifiedImage("ghcr.io/acme/api:2.0", API),
    )


def test_signed_images_verify_and_the_record_names_the_key(registry, key):
    manifests = [pod("web", "ghcr.io/acme/web:1.0", f"ghcr.io/acme/api@{API}")]
    verdict = gate(
        manifests, ImagePolicy(("ghcr.io/acme/*",), TagPolicy.RESOLVE, KEYS), registry, keys_of(key)
    )
    print_ = fingerprint(key.public_key())
    assert verdict.images == (
        VerifiedImage("ghcr.io/acme/web:1.0", WEB, print_, "ghcr.io/acme/web"),
        VerifiedImage(f"ghcr.io/acme/api@{API}", API, print_, "ghcr.io/acme/api"),
    )
    # the digest reference was checked to exist there (and be what it says) before its signatures
    assert ("resolve", "ghcr.io/acme/api", API) in registry.calls


def test_every_unsigned_image_is_listed_before_refusing(registry, key):
    stranger = ec.generate_private_key(ec.SECP256R1())
    unsigned, strangers = digest_of("unsigned"), digest_of("signed by a stranger")
    registry.push("ghcr.io/acme/tool", "1", unsigned)
    registry.push("ghcr.io/acme/job", "1", strangers)
    registry.sign(stranger, "ghcr.io/acme/job", strangers)
    manifests = [
        pod("web", "ghcr.io/acme/web:1.0", "ghcr.io/acme/tool:1"),
        pod("batch", "ghcr.io/acme/job:1", "ghcr.io/acme/tool:1"),
    ]
    with pytest.raises(ImageViolations) as caught:
        gate(manifests, ImagePolicy(("ghcr.io/acme/*",), TagPolicy.RESOLVE, KEYS), registry, keys_of(key))
    error = caught.value
    assert isinstance(error, Stalled)
    assert error.reason is Reason.IMAGE_UNSIGNED
    assert [(v.manifest.name, v.location.rsplit(".", 2)[-2]) for v in error.violations] == [
        ("web", "containers[1]"),
        ("batch", "containers[0]"),
        ("batch", "containers[1]"),
    ]
    assert f"ghcr.io/acme/tool@{unsigned}: no signature" in error.message
    assert f"ghcr.io/acme/job@{strangers}: signed only by keys the tenant does not trust" in error.message
    assert sum(1 for c in registry.calls if c == ("signatures", "ghcr.io/acme/tool", unsigned)) == 1


def test_keys_required_but_none_usable_refuses_every_image_without_the_network():
    broken = TrustedImageKeys.from_config_maps([{"cosign.pub": "not a key"}], names=["cosign-keys"])
    with pytest.raises(ImageViolations) as caught:
        gate(
            [pod("web", f"ghcr.io/acme/web@{WEB}")],
            ImagePolicy(("ghcr.io/acme/*",), keys_from=KEYS),
            NoNetwork(),
            broken,
        )
    assert caught.value.reason is Reason.IMAGE_UNSIGNED
    assert (
        "no usable image key: ConfigMap cosign-keys key 'cosign.pub': not a PEM public key"
        in caught.value.message
    )
    with pytest.raises(ImageViolations, match="hold no public key"):
        gate(
            [pod("web", f"ghcr.io/acme/web@{WEB}")],
            ImagePolicy(("ghcr.io/acme/*",), keys_from=KEYS),
            NoNetwork(),
            None,
        )


def test_a_registry_that_does_not_answer_is_waiting_naming_every_image(registry, key):
    registry.push("quay.io/acme/db", "1", digest_of("db"))
    registry.down.add("quay.io")
    manifests = [pod("web", "ghcr.io/acme/web:1.0", "quay.io/acme/db:1")]
    with pytest.raises(Waiting) as caught:
        gate(
            manifests,
            ImagePolicy(("ghcr.io/acme/*", "quay.io/acme/*"), TagPolicy.RESOLVE, KEYS),
            registry,
            keys_of(key),
        )
    assert not isinstance(caught.value, Stalled)
    assert caught.value.reason is Reason.IMAGE_UNAVAILABLE
    assert "registry quay.io: resolve quay.io/acme/db:1: HTTP 503" in caught.value.message
    assert caught.value.retry_after == 45.0


def test_an_image_not_pushed_yet_is_waiting_not_refused(registry):
    with pytest.raises(Waiting, match=r"image ghcr.io/acme/web:2.0 not found") as caught:
        gate(
            [pod("web", "ghcr.io/acme/web:2.0")],
            ImagePolicy(("ghcr.io/acme/*",), TagPolicy.RESOLVE),
            registry,
        )
    assert caught.value.reason is Reason.IMAGE_UNAVAILABLE


def test_a_refusal_wins_over_an_unavailable_registry_and_mentions_it(registry, key):
    registry.push("ghcr.io/acme/tool", "1", digest_of("unsigned"))
    registry.down.add("quay.io")
    manifests = [pod("web", "ghcr.io/acme/tool:1", "quay.io/acme/db:1")]
    with pytest.raises(ImageViolations) as caught:
        gate(
            manifests,
            ImagePolicy(("ghcr.io/acme/*", "quay.io/acme/*"), TagPolicy.RESOLVE, KEYS),
            registry,
            keys_of(key),
        )
    assert caught.value.reason is Reason.IMAGE_UNSIGNED
    assert "also: registry quay.io: resolve quay.io/acme/db:1: HTTP 503" in caught.value.message


def test_a_verified_digest_is_verified_once_for_every_app(registry, key):
    cache = VerificationCache()
    keys = keys_of(key)
    policy = ImagePolicy(("ghcr.io/acme/*",), keys_from=KEYS)
    for app in range(50):
        gate([pod(f"app{app}", f"ghcr.io/acme/web@{WEB}")], policy, registry, keys, cache)
    assert [c[0] for c in registry.calls] == ["resolve", "signatures"]
    assert cache.size == 1


def test_the_cache_is_keyed_by_repository_and_trusted_keys(registry, key):
    cache = VerificationCache()
    policy = ImagePolicy(("ghcr.io/acme/*",), keys_from=KEYS)
    gate([pod("a", f"ghcr.io/acme/web@{WEB}")], policy, registry, keys_of(key), cache)
    other = ec.generate_private_key(ec.SECP256R1())
    gate(
        [pod("b", f"ghcr.io/acme/web@{WEB}")], policy, registry, keys_of(key, other), cache
    )  # another key set
    registry.present.add(("ghcr.io/acme/mirror", WEB))
    registry.sign(key, "ghcr.io/acme/mirror", WEB)
    gate(
        [pod("c", f"ghcr.io/acme/mirror@{WEB}")], policy, registry, keys_of(key), cache
    )  # same digest elsewhere
    assert [c for c in registry.calls if c[0] == "signatures"] == [
        ("signatures", "ghcr.io/acme/web", WEB),
        ("signatures", "ghcr.io/acme/web", WEB),
        ("signatures", "ghcr.io/acme/mirror", WEB),
    ]


def test_a_refusal_is_remembered_only_briefly(registry, key):
    now = [1000.0]
    cache = VerificationCache(refusal_seconds=30.0, clock=lambda: now[0])
    unsigned = digest_of("signed later")
    registry.push("ghcr.io/acme/late", "1", unsigned)
    policy = ImagePolicy(("ghcr.io/acme/*",), keys_from=KEYS)
    manifests = [pod("late", f"ghcr.io/acme/late@{unsigned}")]
    for _ in range(2):
        with pytest.raises(ImageViolations, match="no signature"):
            gate(manifests, policy, registry, keys_of(key), cache)
    assert sum(1 for c in registry.calls if c[0] == "signatures") == 1  # the second one came from the cache
    registry.sign(key, "ghcr.io/acme/late", unsigned)  # cosign sign after the push and the commit
    now[0] += 31
    verdict = gate(manifests, policy, registry, keys_of(key), cache)
    assert verdict.images[0].key_fingerprint == fingerprint(key.public_key())


def test_registry_failures_are_not_cached(registry, key):
    cache = VerificationCache()
    policy = ImagePolicy(("ghcr.io/acme/*",), keys_from=KEYS)
    registry.down.add("ghcr.io")
    with pytest.raises(Waiting):
        gate([pod("a", f"ghcr.io/acme/web@{WEB}")], policy, registry, keys_of(key), cache)
    registry.down.clear()
    assert (
        gate([pod("a", f"ghcr.io/acme/web@{WEB}")], policy, registry, keys_of(key), cache)
        .images[0]
        .key_fingerprint
    )
    assert cache.size == 1


def test_the_cache_is_bounded_least_recently_used_first():
    now = [0.0]
    cache = VerificationCache(max_entries=3, clock=lambda: now[0])
    verified = SignatureVerdict(SignatureOutcome.VERIFIED, "sha256:k")
    keys = frozenset({"sha256:k"})
    for name in "abc":
        cache.put((name, WEB, keys), verified)
    assert cache.get(("a", WEB, keys)) is verified  # a is now the most recent
    cache.put(("d", WEB, keys), verified)
    assert cache.get(("b", WEB, keys)) is None
    assert {n for n in "acd" if cache.get((n, WEB, keys))} == {"a", "c", "d"}
    now[0] += 3601
    assert cache.get(("a", WEB, keys)) is None  # verified verdicts expire too (an hour by default)


def test_concurrent_apps_wait_for_the_one_verification_in_flight(registry, key):
    registry.hold = threading.Event()
    cache = VerificationCache()
    keys = keys_of(key)
    policy = ImagePolicy(("ghcr.io/acme/*",), keys_from=KEYS)
    results: list[ImageVerdict | BaseException] = []

    def app(number: int) -> None:
        try:
            results.append(
                gate([pod(f"app{number}", f"ghcr.io/acme/web@{WEB}")], policy, registry, keys, cache)
            )
        except BaseException as error:  # noqa: BLE001 - the test reports it
            results.append(error)

    threads = [threading.Thread(target=app, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    # Every app is in flight at once: one inside the registry, the others parked behind it.
    deadline = time.monotonic() + 10
    while not all(waiting_on_an_event(t) for t in threads) and time.monotonic() < deadline:
        time.sleep(0.001)  # polling a condition, with a deadline
    assert all(waiting_on_an_event(t) for t in threads)
    registry.hold.set()
    for thread in threads:
        thread.join(30)
    assert len(results) == 32
    assert all(isinstance(r, ImageVerdict) and r.images[0].key_fingerprint for r in results)
    assert [c[0] for c in registry.calls] == ["resolve", "signatures"]


def test_a_waiter_does_its_own_work_when_the_one_in_flight_fails(key):
    cache = VerificationCache()
    cache_key = ("ghcr.io/acme/web", WEB, frozenset())
    started, release = threading.Event(), threading.Event()
    verified = SignatureVerdict(SignatureOutcome.VERIFIED, "sha256:k")

    def failing() -> SignatureVerdict:
        started.set()
        release.wait(5)
        raise RegistryUnavailable("ghcr.io", "HTTP 503")

    errors: list[BaseException] = []

    def first() -> None:
        try:
            cache.verdict(cache_key, failing, wait_seconds=5)
        except RegistryUnavailable as error:
            errors.append(error)

    leader = threading.Thread(target=first)
    leader.start()
    started.wait(5)
    outcome: list[SignatureVerdict] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(cache.verdict(cache_key, lambda: verified, wait_seconds=5))
    )
    waiter.start()
    deadline = time.monotonic() + 5
    while not waiting_on_an_event(waiter) and time.monotonic() < deadline:
        time.sleep(0.001)  # polling a condition, with a deadline: the waiter is parked behind the leader
    assert waiting_on_an_event(waiter)
    release.set()
    leader.join(5)
    waiter.join(5)
    assert len(errors) == 1
    assert outcome == [verified]


def waiting_on_an_event(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in ``threading.Event.wait`` right now."""
    frame = sys._current_frames().get(thread.ident or 0)  # noqa: SLF001 - the documented way to see a thread
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__:
            return True
        frame = frame.f_back
    return False


def test_the_registry_is_needed_only_to_resolve_tags_or_verify_signatures():
    assert not registry_needed(ImagePolicy(("ghcr.io/*",)))
    assert registry_needed(ImagePolicy(("ghcr.io/*",), TagPolicy.RESOLVE))
    assert registry_needed(ImagePolicy(("ghcr.io/*",), keys_from=KEYS))


def test_a_commit_without_images_passes_even_without_usable_keys():
    manifests = [Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, "c.yaml", 0)]
    verdict = gate(
        manifests, ImagePolicy(("ghcr.io/*",), TagPolicy.RESOLVE, KEYS), NoNetwork(), TrustedImageKeys()
    )
    assert verdict == ImageVerdict(tuple(manifests), ())


def test_a_registry_that_failed_is_not_asked_again_in_the_same_attempt(registry, key):
    """One slow or broken registry costs one image's deadline per attempt, not one per image."""
    registry.down.add("ghcr.io")
    manifests = [pod("web", "ghcr.io/acme/web:1.0"), pod("api", "ghcr.io/acme/api:2.0")]
    with pytest.raises(Waiting) as caught:
        gate(manifests, ImagePolicy(("ghcr.io/acme/*",), TagPolicy.RESOLVE, KEYS), registry, keys_of(key))
    assert caught.value.reason is Reason.IMAGE_UNAVAILABLE
    assert [c[1] for c in registry.calls] == ["ghcr.io/acme/web"]
    assert "not asked about ghcr.io/acme/api: it failed already" in caught.value.message


def test_the_whole_gate_has_one_time_budget(registry, key):
    """Past the commit's budget no registry is asked any more: the attempt is retried later."""
    manifests = [pod("web", f"ghcr.io/acme/web@{WEB}"), pod("api", f"ghcr.io/acme/api@{API}")]
    with pytest.raises(Waiting) as caught:
        check_images(
            manifests,
            ImagePolicy(("ghcr.io/acme/*",), TagPolicy.FORBID, KEYS),
            client=registry,
            trusted_keys=keys_of(key),
            cache=VerificationCache(),
            gate_seconds=0.0,
        )
    assert registry.calls == []
    assert "time budget of 0s ran out before ghcr.io/acme/web" in caught.value.message


def test_a_remembered_verdict_needs_no_registry_even_past_the_budget(registry, key):
    cache = VerificationCache()
    policy = ImagePolicy(("ghcr.io/acme/*",), TagPolicy.FORBID, KEYS)
    manifests = [pod("web", f"ghcr.io/acme/web@{WEB}")]
    gate(manifests, policy, registry, keys_of(key), cache)
    registry.calls.clear()
    verdict = check_images(
        manifests, policy, client=registry, trusted_keys=keys_of(key), cache=cache, gate_seconds=0.0
    )
    assert verdict.images[0].digest == WEB
    assert registry.calls == []
