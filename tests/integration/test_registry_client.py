"""gitward's registry client and cosign verifier against the real Distribution registry and the real cosign.

The registry is the CNCF Distribution server behind TLS (a throwaway CA) and htpasswd
Basic auth on 127.0.0.1 (tests/support/registry.py); images are pushed through its HTTP
API and signed by the real cosign v2 with keys from ``cosign generate-key-pair``. The
real ``cosign verify --key --insecure-ignore-tlog`` is the oracle: for every image and
key tried, gitward's verdict must be cosign's.

What a well-behaved registry never does (stream an endless manifest, drip one byte at a
time, compress, redirect a manifest, lie about a digest, send a bearer challenge with its
token service elsewhere, redirect a blob to another host) is played by a small hostile
HTTPS server on loopback, so every budget and every rule about where credentials go is
exercised over real TLS and HTTP. No control plane is needed.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gitward.api.conditions import Reason
from gitward.api.resources import ImagePolicy, KeyRef, TagPolicy
from gitward.errors import Stalled, Waiting
from gitward.images.budget import ImageBudget
from gitward.images.cosign import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    SignatureOutcome,
    verify_signatures,
)
from gitward.images.keys import TrustedImageKeys
from gitward.images.policy import ImageViolations
from gitward.images.refs import parse_image_ref
from gitward.images.registry import OCI_MANIFEST, RegistryClient, RegistryCredentials, RegistryUnavailable
from gitward.images.verify import VerificationCache, check_images
from gitward.render.manifests import Manifest
from support.gitservers import free_port, make_tls
from support.registry import (
    OCI_CONFIG,
    Registry,
    cosign_keypair,
    cosign_sign,
    cosign_verify,
    push_image,
    sha256_digest,
    upload_blob,
)

KEY_PASSWORD = "k3y-pass"


def docker_config(host: str, username: str, password: str) -> RegistryCredentials:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return RegistryCredentials.from_dockerconfigjson(json.dumps({"auths": {host: {"auth": auth}}}))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def client(registry):
    client = RegistryClient(
        credentials=docker_config(registry.host, registry.username, registry.password), ca_pem=registry.ca_pem
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def cosign_keys(tmp_path_factory):
    """Three real cosign key pairs: (private key path, public key PEM) for alice, bob and carol."""
    directory = tmp_path_factory.mktemp("cosign-keys")
    return {
        name: cosign_keypair(directory, password=KEY_PASSWORD, name=name)
        for name in ("alice", "bob", "carol")
    }


def trusted(*public_pems: bytes) -> TrustedImageKeys:
    keys = TrustedImageKeys.from_config_maps(
        [{f"k{i}.pub": pem.decode() for i, pem in enumerate(public_pems)}]
    )
    assert not keys.problems
    return keys


@pytest.fixture(scope="module")
def images(registry, cosign_keys):
    """Images signed by nobody, by alice, by bob, and by both; name -> (repository, digest)."""
    pushed = {}
    for name, signers in {
        "unsigned": (),
        "alice": ("alice",),
        "bob": ("bob",),
        "both": ("alice", "bob"),
    }.items():
        repository = f"team-a/{name}"
        digest = push_image(registry, repository, "v1")
        for signer in signers:
            cosign_sign(
                registry, registry.reference(repository, digest), cosign_keys[signer][0], KEY_PASSWORD
            )
        pushed[name] = (repository, digest)
    return pushed


# ----------------------------------------------------------------------------------------------- resolve


def test_a_tag_resolves_to_the_digest_the_registry_stored(registry, client):
    digest = push_image(registry, "team-a/web", "v1")
    assert client.resolve(parse_image_ref(f"{registry.host}/team-a/web:v1")) == digest
    moved = push_image(registry, "team-a/web", "v1")  # the tag moves on: the new digest
    assert moved != digest
    assert client.resolve(parse_image_ref(f"{registry.host}/team-a/web:v1")) == moved


def test_a_digest_reference_is_fetched_and_checked_against_its_digest(registry, client):
    digest = push_image(registry, "team-a/pinned", "v1")
    assert client.resolve(parse_image_ref(f"{registry.host}/team-a/pinned@{digest}")) == digest
    assert client.resolve(parse_image_ref(f"{registry.host}/team-a/pinned:whatever@{digest}")) == digest


@pytest.mark.parametrize(
    "reference", ["team-a/web:not-pushed", "team-a/nothing-here:v1", "team-a/web@sha256:" + "0" * 64]
)
def test_an_image_that_is_not_there_is_unavailable_and_retried(registry, client, reference):
    with pytest.raises(RegistryUnavailable) as caught:
        client.resolve(parse_image_ref(f"{registry.host}/{reference}"))
    error = caught.value
    assert isinstance(error, Waiting)
    assert not isinstance(error, Stalled)
    assert error.reason is Reason.IMAGE_UNAVAILABLE
    assert "not found (not pushed yet, or no such repository or tag)" in error.message
    assert error.message.startswith(f"registry {registry.host}: image {registry.host}/")


def test_the_manifest_media_types_of_images_and_indexes_are_read(registry, client):
    """An OCI index (a multi-platform image) resolves to the index's own digest, as cosign signs it."""
    child = push_image(registry, "team-a/multi", "amd64")
    size = len(registry.manifest("team-a/multi", child)[0])
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": child,
                    "size": size,
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    put_manifest(registry, "team-a/multi", "v1", index, "application/vnd.oci.image.index.v1+json")
    assert client.resolve(parse_image_ref(f"{registry.host}/team-a/multi:v1")) == sha256_digest(index)


# ------------------------------------------------------------------------------------------ auth and TLS


def test_without_credentials_the_refusal_is_clear(registry):
    client = RegistryClient(ca_pem=registry.ca_pem)
    with pytest.raises(RegistryUnavailable) as caught:
        client.resolve(parse_image_ref(f"{registry.host}/team-a/web:v1"))
    assert caught.value.message == (
        f"registry {registry.host}: image {registry.host}/team-a/web:v1: asks for credentials; "
        "the tenant has no registry credentials (spec.images.credentialsRef)"
    )


def test_wrong_credentials_are_refused_without_the_password_anywhere(registry):
    wrong = "Wr0ng-Hunter2-Secret"
    credentials = docker_config(registry.host, registry.username, wrong)
    client = RegistryClient(credentials=credentials, ca_pem=registry.ca_pem)
    with pytest.raises(RegistryUnavailable) as caught:
        client.resolve(parse_image_ref(f"{registry.host}/team-a/web:v1"))
    error = caught.value
    assert (
        "access refused (HTTP 401, or no such repository); check the credentials in spec.images.credentialsRef"
        in error.message
    )
    encoded = base64.b64encode(f"{registry.username}:{wrong}".encode()).decode()
    rendered = [
        str(error),
        repr(error),
        repr(error.args),
        "".join(traceback.format_exception(error)),
        repr(client),
        repr(credentials),
    ]
    for text in rendered:
        assert wrong not in text
        assert encoded not in text
    assert registry.username in repr(credentials)  # the user name may show; the password never


def test_a_registry_whose_certificate_is_not_trusted_is_refused(registry, tmp_path):
    other_ca, _, _ = make_tls(tmp_path / "other-ca")
    for ca_pem in (None, other_ca.read_bytes()):
        client = RegistryClient(
            credentials=docker_config(registry.host, registry.username, registry.password), ca_pem=ca_pem
        )
        with pytest.raises(
            RegistryUnavailable,
            match=r"TLS failed; is the registry's certificate signed by a CA in spec\.images\.caFrom",
        ):
            client.resolve(parse_image_ref(f"{registry.host}/team-a/web:v1"))


def test_a_ca_bundle_that_is_not_pem_is_a_settings_error():
    with pytest.raises(ValueError, match="the caFrom bundle is not PEM certificates"):
        RegistryClient(ca_pem=b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


# ------------------------------------------------------------------------------------- cosign signatures


@pytest.mark.parametrize("image", ["unsigned", "alice", "bob", "both"])
@pytest.mark.parametrize("key", ["alice", "bob", "carol"])
def test_verdicts_match_the_real_cosign(registry, client, cosign_keys, images, image, key):
    """gitward's verifier agrees with ``cosign verify --key`` on every image and key."""
    repository, digest = images[image]
    reference = registry.reference(repository, digest)
    public = cosign_keys[key][1]
    oracle = cosign_verify(registry, reference, public)
    verdict = verify_signatures(
        client.signatures(parse_image_ref(reference), digest), digest=digest, keys=trusted(public)
    )
    assert verdict.verified is oracle
    assert oracle is (key in {"alice": ("alice",), "bob": ("bob",), "both": ("alice", "bob")}.get(image, ()))
    if image == "unsigned":
        assert verdict.outcome is SignatureOutcome.NO_SIGNATURE
    elif not oracle:
        assert verdict.outcome is SignatureOutcome.UNTRUSTED


def test_a_real_cosign_signature_names_the_key_that_verified_it(registry, client, cosign_keys, images):
    repository, digest = images["both"]
    keys = trusted(cosign_keys["carol"][1], cosign_keys["bob"][1])
    payloads = client.signatures(parse_image_ref(registry.reference(repository, digest)), digest)
    assert len(payloads) == 2
    assert all(
        json.loads(p.payload)["critical"]["image"]["docker-manifest-digest"] == digest for p in payloads
    )
    verdict = verify_signatures(payloads, digest=digest, keys=keys)
    bob = next(k for k in keys.keys if k.fingerprint != trusted(cosign_keys["carol"][1]).keys[0].fingerprint)
    assert verdict.key_fingerprint == bob.fingerprint
    assert verdict.claimed_reference == f"{registry.host}/{repository}"


def test_a_signature_copied_onto_another_image_does_not_cover_it(registry, client, cosign_keys, images):
    """alice's signature of one digest, put under another digest's .sig tag: neither gitward nor cosign accepts it."""
    repository, signed = images["alice"]
    impostor = push_image(registry, repository, "v2")
    body, content_type = registry.manifest(repository, f"sha256-{signed.removeprefix('sha256:')}.sig")
    put_manifest(registry, repository, f"sha256-{impostor.removeprefix('sha256:')}.sig", body, content_type)
    reference = registry.reference(repository, impostor)
    public = cosign_keys["alice"][1]
    verdict = verify_signatures(
        client.signatures(parse_image_ref(reference), impostor), digest=impostor, keys=trusted(public)
    )
    assert verdict.outcome is SignatureOutcome.OTHER_DIGEST
    assert cosign_verify(registry, reference, public) is False


def test_the_whole_gate_on_the_real_registry(registry, client, cosign_keys, images):
    """Tags resolved and pinned as written, real signatures verified, an unsigned image refused with its reason."""
    repository, digest = images["alice"]
    alice = trusted(cosign_keys["alice"][1])
    policy = ImagePolicy((f"{registry.host}/team-a/*",), TagPolicy.RESOLVE, (KeyRef("cosign-keys"),))
    push_image_tag(registry, repository, "release", digest)
    written = f"{registry.host}/{repository}:release"
    verdict = check_images(
        [deployment("web", written)], policy, client=client, trusted_keys=alice, cache=VerificationCache()
    )
    pinned = verdict.manifests[0].obj["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pinned == f"{written}@{digest}"
    assert verdict.images[0].key_fingerprint == alice.keys[0].fingerprint
    assert (
        cosign_verify(registry, pinned, cosign_keys["alice"][1]) is True
    )  # cosign reads the pinned form too
    unsigned = f"{registry.host}/{images['unsigned'][0]}:v1"
    with pytest.raises(ImageViolations) as caught:
        check_images(
            [deployment("web", written, unsigned)],
            policy,
            client=client,
            trusted_keys=alice,
            cache=VerificationCache(),
        )
    assert caught.value.reason is Reason.IMAGE_UNSIGNED
    assert [v.location for v in caught.value.violations] == ["spec.template.spec.containers[1].image"]
    assert "no signature" in caught.value.message


# ------------------------------------------------------------------------------- budgets, real registry


def test_a_manifest_over_the_budget_is_refused_by_its_declared_length(registry, client):
    config = b"{}"
    config_digest = upload_blob(registry, "team-a/fat", config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [],
            "annotations": {"padding": "x" * 64 * 1024},
        }
    ).encode()
    put_manifest(registry, "team-a/fat", "v1", manifest, OCI_MANIFEST)
    small = RegistryClient(
        credentials=client.credentials,
        ca_pem=registry.ca_pem,
        budget=ImageBudget(max_manifest_bytes=16 * 1024),
    )
    with pytest.raises(RegistryUnavailable, match=f"{len(manifest)} bytes is over the budget of 16384 bytes"):
        small.resolve(parse_image_ref(f"{registry.host}/team-a/fat:v1"))
    assert client.resolve(parse_image_ref(f"{registry.host}/team-a/fat:v1")) == sha256_digest(manifest)


# ----------------------------------------------------------------------------------- a hostile registry

Respond = Callable[["_Handler"], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.path, dict(self.headers.items())))
        respond = self.server.routes.get(self.path.split("?")[0])
        if respond is None:
            self.reply(404, b"{}")
            return
        try:
            respond(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _HostileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.routes: dict[str, Respond] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.host = f"127.0.0.1:{self.server_address[1]}"

    def seen(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [headers for p, headers in self.requests if p.split("?")[0] == path]


@pytest.fixture(scope="module")
def hostile_tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("hostile-tls"))


@pytest.fixture
def hostile(hostile_tls):
    """Two hostile HTTPS servers on loopback (a registry and 'another host'), sharing one CA."""
    ca, cert, key = hostile_tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    servers = [_HostileServer(context), _HostileServer(context)]
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in servers
    ]
    for thread in threads:
        thread.start()
    try:
        yield servers[0], servers[1], ca.read_bytes()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def hostile_client(ca_pem: bytes, host: str = "", **budget) -> RegistryClient:
    credentials = docker_config(host, "robot", "Sup3r-Secret-Pass") if host else None
    return RegistryClient(credentials=credentials, ca_pem=ca_pem, budget=ImageBudget(**budget))


MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()


def test_an_endless_manifest_is_cut_at_the_budget(hostile):
    registry, _, ca = hostile
    sent = [0]
    stopped = threading.Event()

    def endless(handler: _Handler) -> None:
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", OCI_MANIFEST)
            handler.send_header("Connection", "close")  # no length: the body runs until the connection closes
            handler.end_headers()
            while sent[0] < 512 * 1024 * 1024:
                handler.wfile.write(b" " * 65536)
                sent[0] += 65536
        finally:
            stopped.set()  # the client hung up (the write failed), or everything was sent

    registry.routes["/v2/team/web/manifests/v1"] = endless
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="more than the budget of 65536 bytes"):
        hostile_client(ca, max_manifest_bytes=65536).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))
    assert time.monotonic() - started < 10
    assert stopped.wait(30), "the server is still sending"
    assert sent[0] < 16 * 1024 * 1024  # what the kernel buffered, not what an unbounded read would take


def test_a_registry_dripping_bytes_is_cut_at_the_deadline(hostile):
    registry, _, ca = hostile

    def drip(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", OCI_MANIFEST)
        handler.send_header("Content-Length", "4000")
        handler.end_headers()
        for _ in range(4000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)

    registry.routes["/v2/team/web/manifests/v1"] = drip
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="not received within the time budget"):
        hostile_client(ca, seconds_per_image=1.5, read_timeout_seconds=1.0).resolve(
            parse_image_ref(f"{registry.host}/team/web:v1")
        )
    assert time.monotonic() - started < 4  # 200 s of dripping, cut after the image's 1.5 s


def test_a_registry_dripping_its_headers_is_cut_at_the_deadline(hostile):
    """Each read arrives within the read timeout, so only the image's deadline can stop it."""
    registry, _, ca = hostile

    def drip_headers(handler: _Handler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(4000):
            handler.wfile.write(b"X")
            handler.wfile.flush()
            time.sleep(0.05)

    registry.routes["/v2/team/web/manifests/v1"] = drip_headers
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="not received within the time budget"):
        hostile_client(ca, seconds_per_image=1.5, read_timeout_seconds=1.0).resolve(
            parse_image_ref(f"{registry.host}/team/web:v1")
        )
    assert time.monotonic() - started < 4


def test_a_registry_dripping_its_tls_handshake_is_cut_at_the_deadline(hostile):
    """A TLS record header announcing 16 KiB, then one byte at a time: the handshake never times out alone."""
    _, _, ca = hostile
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"\x16\x03\x03\x40\x00")
            while not stop.is_set():
                try:
                    connection.sendall(b"\x00")
                except OSError:
                    return
                time.sleep(0.05)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    host = f"127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    try:
        # CPython bounds a handshake by the connect timeout; here that is longer than the image's deadline
        with pytest.raises(RegistryUnavailable, match="not received within the time budget"):
            hostile_client(
                ca, seconds_per_image=1.5, read_timeout_seconds=1.0, connect_timeout_seconds=5.0
            ).resolve(parse_image_ref(f"{host}/team/web:v1"))
        assert time.monotonic() - started < 4
    finally:
        stop.set()
        listener.close()
        server.join(5)


def test_a_registry_that_does_not_answer_times_out(hostile):
    registry, _, ca = hostile
    registry.routes["/v2/team/web/manifests/v1"] = lambda _: time.sleep(5)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="timed out"):
        hostile_client(ca, read_timeout_seconds=0.5).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(200)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"y" * 100_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + OCI_MANIFEST.encode()
        + b"\r\nContent-Length: 1000\r\n\r\nshort",
    ],
)
def test_a_registry_speaking_garbage_is_unavailable_not_a_crash(hostile, answer):
    registry, _, ca = hostile

    def garbage(handler: _Handler) -> None:
        handler.wfile.write(answer)
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(2)

    registry.routes["/v2/team/web/manifests/v1"] = garbage
    with pytest.raises(RegistryUnavailable, match=r"no usable answer \((ProtocolError|SSLError)\)"):
        hostile_client(ca).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))


def test_a_registry_that_is_not_listening_is_unavailable():
    port = free_port()
    with pytest.raises(RegistryUnavailable, match="cannot connect") as caught:
        RegistryClient().resolve(parse_image_ref(f"127.0.0.1:{port}/team/web:v1"))
    assert caught.value.registry == f"127.0.0.1:{port}"


def test_a_compressed_manifest_is_refused_not_decompressed(hostile):
    registry, _, ca = hostile
    registry.routes["/v2/team/web/manifests/v1"] = lambda h: h.reply(
        200, b"\x1f\x8b" + b"\0" * 64, {"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"}
    )
    with pytest.raises(RegistryUnavailable, match="content encoding 'gzip' although gitward asked for none"):
        hostile_client(ca).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))
    assert registry.seen("/v2/team/web/manifests/v1")[0]["Accept-Encoding"] == "identity"


def test_a_manifest_redirect_is_not_followed(hostile):
    registry, elsewhere, ca = hostile
    registry.routes["/v2/team/web/manifests/v1"] = lambda h: h.reply(
        302, b"", {"Location": f"https://{elsewhere.host}/v2/team/web/manifests/v1"}
    )
    with pytest.raises(RegistryUnavailable, match="answered a redirect for a manifest"):
        hostile_client(ca, registry.host).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))
    assert elsewhere.requests == []


def test_the_digest_is_computed_never_taken_from_the_registry(hostile):
    registry, _, ca = hostile
    lie = "sha256:" + "0" * 64
    registry.routes["/v2/team/web/manifests/v1"] = lambda h: h.reply(
        200, MANIFEST, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": lie}
    )
    registry.routes[f"/v2/team/web/manifests/{lie}"] = registry.routes["/v2/team/web/manifests/v1"]
    client = hostile_client(ca)
    assert client.resolve(parse_image_ref(f"{registry.host}/team/web:v1")) == sha256_digest(MANIFEST)
    with pytest.raises(
        RegistryUnavailable, match=f"served a manifest for {registry.host}/team/web@{lie} whose sha256 is"
    ):
        client.resolve(parse_image_ref(f"{registry.host}/team/web@{lie}"))


def test_an_unreadable_media_type_is_refused(hostile):
    registry, _, ca = hostile
    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    registry.routes["/v2/team/web/manifests/v1"] = lambda h: h.reply(200, MANIFEST, {"Content-Type": schema1})
    with pytest.raises(RegistryUnavailable, match="is not one gitward reads"):
        hostile_client(ca).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [(429, {"Retry-After": "120"}, 120.0), (503, {}, 30.0), (500, {"Retry-After": "99999"}, 600.0)],
)
def test_rate_limits_and_server_errors_are_retried_later(hostile, status, headers, retry_after):
    registry, _, ca = hostile
    registry.routes["/v2/team/web/manifests/v1"] = lambda h: h.reply(status, b"busy", headers)
    with pytest.raises(RegistryUnavailable, match=f"HTTP {status}") as caught:
        hostile_client(ca).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))
    assert caught.value.retry_after == retry_after


def _signed_layer(payload: bytes) -> tuple[dict, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    layer = {
        "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
        "digest": sha256_digest(payload),
        "size": len(payload),
        "annotations": {SIGNATURE_ANNOTATION: signature},
    }
    return layer, key


def test_the_bearer_flow_sends_each_secret_only_where_it_belongs(hostile):
    """The registry's login goes to the token service it names; the token to the registry; nothing to a blob redirect."""
    registry, other, ca = hostile
    digest = sha256_digest(MANIFEST)
    payload = (
        f'{{"critical":{{"identity":{{"docker-reference":"{registry.host}/team/web"}},'
        f'"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}'
    ).encode()
    layer, key = _signed_layer(payload)
    signature_manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": [layer]}
    ).encode()
    token = "t0ken-" + "x" * 40
    challenge = (
        f'Bearer realm="https://{other.host}/token",service="hostile",scope="repository:team/web:pull"'
    )

    def bearer_only(body: bytes, headers: dict[str, str]) -> Respond:
        def respond(handler: _Handler) -> None:
            if handler.headers.get("Authorization") != f"Bearer {token}":
                handler.reply(401, b"{}", {"WWW-Authenticate": challenge})
            else:
                handler.reply(200, body, headers)

        return respond

    def token_service(handler: _Handler) -> None:
        expected = "Basic " + base64.b64encode(b"robot:Sup3r-Secret-Pass").decode()
        if handler.headers.get("Authorization") != expected:
            handler.reply(401, b"{}")
        else:
            handler.reply(
                200,
                json.dumps({"token": token, "expires_in": 300}).encode(),
                {"Content-Type": "application/json"},
            )

    sig_path = f"/v2/team/web/manifests/sha256-{digest.removeprefix('sha256:')}.sig"
    registry.routes["/v2/team/web/manifests/v1"] = bearer_only(MANIFEST, {"Content-Type": OCI_MANIFEST})
    registry.routes[sig_path] = bearer_only(signature_manifest, {"Content-Type": OCI_MANIFEST})
    registry.routes[f"/v2/team/web/blobs/{layer['digest']}"] = _redirect_when_authorized(
        token, challenge, f"https://{other.host}/storage/blob"
    )
    other.routes["/token"] = token_service
    other.routes["/storage/blob"] = lambda h: h.reply(
        200, payload, {"Content-Type": "application/octet-stream"}
    )

    client = hostile_client(ca, registry.host)
    ref = parse_image_ref(f"{registry.host}/team/web:v1")
    assert client.resolve(ref) == digest
    payloads = client.signatures(ref, digest)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verify_signatures(payloads, digest=digest, keys=trusted(pem)).verified

    registry_auth = [h.get("Authorization", "") for _, h in registry.requests]
    assert registry_auth[0] == ""  # nothing is sent before the registry asks
    assert {a.split(" ")[0] for a in registry_auth if a} == {"Bearer"}  # the login never goes to the registry
    assert len(other.seen("/token")) == 1  # the token is reused for the repository
    assert other.seen("/token")[0]["Authorization"].startswith("Basic ")
    assert "Authorization" not in other.seen("/storage/blob")[0]  # a redirect carries no credentials
    query = next(p for p, _ in other.requests if p.startswith("/token"))
    assert "scope=repository%3Ateam%2Fweb%3Apull" in query
    assert "service=hostile" in query


def _redirect_when_authorized(token: str, challenge: str, location: str) -> Respond:
    def respond(handler: _Handler) -> None:
        if handler.headers.get("Authorization") != f"Bearer {token}":
            handler.reply(401, b"{}", {"WWW-Authenticate": challenge})
        else:
            handler.reply(307, b"", {"Location": location})

    return respond


def test_a_token_service_that_is_not_https_gets_nothing(hostile):
    registry, _, ca = hostile
    registry.routes["/v2/team/web/manifests/v1"] = lambda h: h.reply(
        401, b"{}", {"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:9/token"'}
    )
    with pytest.raises(RegistryUnavailable, match="the token service must be an https URL"):
        hostile_client(ca, registry.host).resolve(parse_image_ref(f"{registry.host}/team/web:v1"))


@pytest.mark.parametrize(
    ("served", "complaint"),
    [
        (b'{"critical":{X}', "do not match the layer's digest and size"),  # same size, other bytes
        (b'{"critical":{}}  ', r"17 bytes is over the budget of 15 bytes"),
        (b"x" * 100_000, r"\(its descriptor says 15 bytes\): 100000 bytes is over the budget"),
    ],
)
def test_a_signature_payload_that_is_not_what_its_descriptor_says_is_refused(hostile, served, complaint):
    registry, _, ca = hostile
    digest = sha256_digest(MANIFEST)
    payload = b'{"critical":{}}'
    layer, _ = _signed_layer(payload)
    signature_manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [layer]}
    ).encode()
    registry.routes[f"/v2/team/web/manifests/sha256-{digest.removeprefix('sha256:')}.sig"] = lambda h: (
        h.reply(200, signature_manifest, {"Content-Type": OCI_MANIFEST})
    )
    registry.routes[f"/v2/team/web/blobs/{layer['digest']}"] = lambda h: h.reply(200, served)
    with pytest.raises(RegistryUnavailable, match=complaint):
        hostile_client(ca).signatures(parse_image_ref(f"{registry.host}/team/web:v1"), digest)


def test_only_so_many_signature_layers_are_fetched(hostile):
    registry, _, ca = hostile
    digest = sha256_digest(MANIFEST)
    layers = [_signed_layer(b'{"n":%d}' % n)[0] for n in range(40)]
    signature_manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": layers}
    ).encode()
    registry.routes[f"/v2/team/web/manifests/sha256-{digest.removeprefix('sha256:')}.sig"] = lambda h: (
        h.reply(200, signature_manifest, {"Content-Type": OCI_MANIFEST})
    )
    for n, layer in enumerate(layers):
        registry.routes[f"/v2/team/web/blobs/{layer['digest']}"] = lambda h, n=n: h.reply(
            200, b'{"n":%d}' % n
        )
    payloads = hostile_client(ca, max_signature_layers=5).signatures(
        parse_image_ref(f"{registry.host}/team/web:v1"), digest
    )
    assert [p.payload for p in payloads] == [b'{"n":%d}' % n for n in range(5)]
    assert sum(1 for p, _ in registry.requests if "/blobs/" in p) == 5


# ------------------------------------------------------------------------------------------------ helpers


def put_manifest(registry: Registry, repository: str, reference: str, body: bytes, content_type: str) -> None:
    status, _, answer = registry.request(
        "PUT", f"/v2/{repository}/manifests/{reference}", body=body, headers={"Content-Type": content_type}
    )
    assert status == 201, answer[:300]


def push_image_tag(registry: Registry, repository: str, tag: str, digest: str) -> None:
    body, content_type = registry.manifest(repository, digest)
    assert hashlib.sha256(body).hexdigest() == digest.removeprefix("sha256:")
    put_manifest(registry, repository, tag, body, content_type)


def deployment(name: str, *images: str) -> Manifest:
    spec = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"spec": spec}},
    }
    return Manifest(obj, f"deploy/{name}.yaml", 0)
