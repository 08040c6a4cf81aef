"""The only code in gitward that talks to container registries: an OCI distribution client, read-only.

What it does: resolve a tag to the digest of the manifest the registry serves for it,
check that a digest reference really names that content, and fetch an image's cosign
signature layers (``images.cosign`` judges them). How it stays safe with registries that
tenants' manifests point at:

- HTTPS only, the system roots plus the tenant's ``caFrom`` bundle; no plain HTTP, no
  proxies of its own.
- Digests are computed from the bytes received (sha256), never taken from the
  registry's ``Docker-Content-Digest`` header; a body that does not match the digest
  asked for, or a payload that does not match its layer descriptor, is refused.
- Credentials come from a ``kubernetes.io/dockerconfigjson`` Secret, chosen by registry
  host, and are sent only after the registry asks for them: as Basic to the registry
  itself, or to the token service its ``WWW-Authenticate: Bearer realm=...`` names (the
  flow ghcr.io and Docker Hub use; a token is then sent to that registry only).
  Manifests are never fetched through a redirect; a blob may be, at most
  ``max_redirects`` times, to HTTPS, and without the ``Authorization`` header.
- Every response is read incrementally within the :class:`~gitward.images.budget.ImageBudget`
  (bytes per manifest, payload and token; one deadline per image), with content
  encodings refused rather than decompressed, so a hostile registry cannot make the
  operator read or wait past the budget. A declared ``Content-Length`` over the budget
  is refused before the body is read.
- A registry that does not answer, answers 5xx or 429, refuses access, has no such
  image (yet), or breaks the rules above is :class:`RegistryUnavailable`, a ``Waiting``
  with reason ``ImageUnavailable``: retried later, since images and their signatures are
  often pushed after the commit that names them. Messages name the registry and the
  image, never a password or token (they are ``repr=False`` everywhere).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from gitward.api.conditions import Reason
from gitward.errors import Waiting
from gitward.images.budget import Deadline, ImageBudget
from gitward.images.cosign import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    SignedPayload,
    signature_tag,
)
from gitward.images.refs import DEFAULT_REGISTRY, SHA256_DIGEST, ImageRef

if TYPE_CHECKING:  # urllib3 declares its connection protocol for type checkers only
    from urllib3._base_connection import BaseHTTPConnection

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFEST_TYPES: Final = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
SIGNATURE_MANIFEST_TYPES: Final = (OCI_MANIFEST, DOCKER_MANIFEST)
DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"
_DOCKER_HUB_NAMES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_USER_AGENT: Final = "gitward"
_READ_CHUNK: Final = 64 * 1024
_MIN_TOKEN_SECONDS: Final = 60  # the token spec's default and minimum lifetime
_MAX_CACHED_SECONDS: Final = 3600.0
_RETRY_AFTER_RANGE: Final = (5.0, 600.0)
_BROKEN_REGISTRY_RETRY: Final = 300.0  # a registry breaking the protocol will not mend in seconds
_CHALLENGE_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces or line breaks (header injection)


class RegistryUnavailable(Waiting):
    """A registry did not give gitward what it needs about an image: retried after ``retry_after``."""

    def __init__(self, registry: str, message: str, *, retry_after: float = 30.0) -> None:
        super().__init__(Reason.IMAGE_UNAVAILABLE, f"registry {registry}: {message}", retry_after=retry_after)
        self.registry = registry


class InvalidRegistrySettingsError(ValueError):
    """A tenant's registry settings (CA bundle, credentials Secret) are unusable; the message says which."""


# ------------------------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class RegistryLogin:
    """A user name and password for one registry (the password never appears in a repr)."""

    username: str
    password: str = field(repr=False)

    def basic_authorization(self) -> str:
        """The ``Authorization`` header value for HTTP Basic."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True, slots=True)
class CredentialEntry:
    """One ``auths`` entry: the registry host, an optional repository path prefix, the login."""

    registry: str
    path: str
    login: RegistryLogin


def _json_or_none(data: bytes | str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _registry_of(key: str) -> tuple[str, str]:
    """``https://ghcr.io/v2/`` → (``ghcr.io``, ""); ``ghcr.io/acme`` → (``ghcr.io``, ``acme``)."""
    text = key.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    host, _, path = text.partition("/")
    path = path.strip("/")
    if path in ("v1", "v2"):
        path = ""
    host = host.lower()
    return (DEFAULT_REGISTRY if host in _DOCKER_HUB_NAMES else host), path


def _login_of(entry: Mapping[str, Any]) -> RegistryLogin | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, ValueError):
            return None
        username, colon, password = decoded.partition(":")
        return RegistryLogin(username, password) if colon and username else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return RegistryLogin(name, secret)
    return None


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """Logins by registry, from a ``.dockerconfigjson``; only ``auth`` or ``username``/``password`` entries.

    An entry applies to its registry host (``docker.io``, ``index.docker.io`` and
    ``https://index.docker.io/v1/`` all mean Docker Hub); an entry with a path
    (``ghcr.io/acme``) applies only to repositories under it, and the longest one wins.
    Identity tokens and credential helpers are not supported.
    """

    entries: tuple[CredentialEntry, ...] = ()

    @classmethod
    def from_dockerconfigjson(cls, data: bytes | str) -> RegistryCredentials:
        """Parse a ``kubernetes.io/dockerconfigjson`` Secret's ``.dockerconfigjson`` value.

        Raises :class:`InvalidRegistrySettingsError` with a message that quotes nothing of the Secret.
        """
        document = _json_or_none(data)  # the parse error holds the Secret's text: it must not travel on
        if document is None:
            raise InvalidRegistrySettingsError(".dockerconfigjson is not JSON")
        auths = document.get("auths") if isinstance(document, Mapping) else None
        if not isinstance(auths, Mapping):
            raise InvalidRegistrySettingsError(".dockerconfigjson has no 'auths' object")
        entries = []
        for key, entry in auths.items():
            login = _login_of(entry) if isinstance(entry, Mapping) else None
            if login is not None:
                entries.append(CredentialEntry(*_registry_of(str(key)), login))
        return cls(tuple(entries))

    def login_for(self, registry: str, repository: str) -> RegistryLogin | None:
        """The login for a repository of a registry (normalised names, as in ``ImageRef``), if any."""
        best: CredentialEntry | None = None
        for entry in self.entries:
            if entry.registry != registry.lower():
                continue
            if entry.path and repository != entry.path and not repository.startswith(entry.path + "/"):
                continue
            if best is None or len(entry.path) > len(best.path):
                best = entry
        return best.login if best else None

    @property
    def registries(self) -> tuple[str, ...]:
        """The registries there are logins for (for messages)."""
        return tuple(sorted({e.registry for e in self.entries}))


def api_host(registry: str) -> str:
    """The host serving a registry's API: Docker Hub's is ``registry-1.docker.io``."""
    return DOCKER_HUB_API_HOST if registry == DEFAULT_REGISTRY else registry


_INTERNAL_SUFFIXES: Final = (".local", ".localhost", ".internal", ".svc", ".cluster.local")


def _internal(host: str) -> bool:
    """Whether ``host`` is this machine, its cluster or a private network, not a public service.

    A literal address that is not global, ``localhost``, a single-label name, or a name under a
    suffix that only resolves inside (``.svc``, ``.cluster.local``, ``.internal``, ``.local``).
    """
    name = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name == "localhost" or name.endswith(_INTERNAL_SUFFIXES) or "." not in name
    return not address.is_global


def elsewhere_problem(registry: str, url: str) -> str | None:
    """Why a registry may not send gitward to ``url`` (its token service, a blob's redirect), or None.

    A registry names these hosts itself, so an allowed registry could otherwise point the operator
    at its own cluster or at a cloud's metadata address. Another public host is fine (Docker Hub's
    token service and blob storage are elsewhere); an internal one only if it is the registry's own.
    """
    target = urllib.parse.urlsplit(url).hostname or ""
    own = urllib.parse.urlsplit(f"https://{api_host(registry)}").hostname or ""
    if target.lower() == own.lower():
        return None
    if _internal(target):
        return f"points at {target}, an internal address that is not the registry's own host"
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` → (``bearer``, {realm: ..., service: ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        name.lower(): re.sub(r"\\(.)", r"\1", quoted) if quoted or not bare else bare
        for name, quoted, bare in _CHALLENGE_PARAM.findall(rest)
    }
    return scheme.lower(), params


# ------------------------------------------------------------------------------------------------ client


@dataclass(frozen=True, slots=True)
class _Authorization:
    header: str = field(repr=False)
    expires_at: float


def _retry_after(response: urllib3.BaseHTTPResponse) -> float:
    low, high = _RETRY_AFTER_RANGE
    try:
        seconds = float(response.headers.get("Retry-After", "30"))
    except ValueError:
        seconds = 30.0
    return min(high, max(low, seconds))


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Drop a response whose body will not be read: close its connection rather than drain it."""
    response.close()
    response.release_conn()


def _content_type(response: urllib3.BaseHTTPResponse) -> str:
    return str(response.headers.get("Content-Type", "")).split(";")[0].strip().lower()


def _check_body_headers(registry: str, response: urllib3.BaseHTTPResponse, limit: int, what: str) -> None:
    """Refuse a body before reading it: compressed (a bomb is not decompressed) or declared over budget."""
    encoding = str(response.headers.get("Content-Encoding", "identity")).strip().lower()
    if encoding not in ("", "identity"):
        raise RegistryUnavailable(
            registry,
            f"{what}: sent with content encoding {encoding[:40]!r} although gitward asked for none",
            retry_after=_BROKEN_REGISTRY_RETRY,
        )
    declared = str(response.headers.get("Content-Length", "")).strip()
    if declared.isdigit() and int(declared) > limit:
        raise RegistryUnavailable(
            registry,
            f"{what}: {int(declared)} bytes is over the budget of {limit} bytes",
            retry_after=_BROKEN_REGISTRY_RETRY,
        )


def _read_within(
    registry: str, response: urllib3.BaseHTTPResponse, limit: int, deadline: Deadline, what: str
) -> bytes:
    """Read a body one socket read at a time, stopping at ``limit`` + 1 bytes or the deadline."""
    body = bytearray()
    while True:
        if deadline.expired:
            raise RegistryUnavailable(registry, f"{what}: not received within the time budget")
        chunk = response.read1(min(_READ_CHUNK, limit + 1 - len(body)), decode_content=False)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise RegistryUnavailable(
                registry, f"{what}: more than the budget of {limit} bytes", retry_after=_BROKEN_REGISTRY_RETRY
            )


class _Watch:
    """The connection one request is using, so a watchdog can cut it at the image's deadline."""

    def __init__(self) -> None:
        self.connection: BaseHTTPConnection | None = None
        self.fired = False

    def cut(self) -> None:
        """Shut the connection's socket down: the blocked read in the requesting thread fails at once."""
        self.fired = True
        sock = getattr(self.connection, "sock", None)  # the plain socket while TLS is still shaking hands
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_WATCHED = threading.local()  # .watch: the _Watch of the request this thread is making


class _WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    """An HTTPS pool that tells the current request's watch which connection it got."""

    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        connection = super()._get_conn(timeout)
        watch = getattr(_WATCHED, "watch", None)
        if isinstance(watch, _Watch):
            watch.connection = connection
        return connection


class RegistryClient:
    """A read-only OCI distribution client for one tenant's settings; safe to share between threads."""

    def __init__(
        self,
        *,
        credentials: RegistryCredentials | None = None,
        ca_pem: bytes | None = None,
        budget: ImageBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        context = ssl.create_default_context()
        if ca_pem:
            try:
                context.load_verify_locations(cadata=ca_pem.decode("ascii"))
            except (ssl.SSLError, ValueError):
                raise InvalidRegistrySettingsError("the caFrom bundle is not PEM certificates") from None
        self.credentials = credentials or RegistryCredentials()
        self.budget = budget or ImageBudget()
        self._clock = clock
        self._pool = urllib3.PoolManager(num_pools=32, maxsize=4, ssl_context=context, retries=False)
        self._pool.pool_classes_by_scheme = {"https": _WatchedHTTPSConnectionPool}  # HTTPS only, watched
        self._lock = threading.Lock()
        self._authorizations: dict[tuple[str, str], _Authorization] = {}

    def __repr__(self) -> str:
        return f"RegistryClient(credentials for {list(self.credentials.registries)}, budget={self.budget})"

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.clear()

    def deadline(self) -> Deadline:
        """A fresh deadline for the work on one image."""
        return Deadline(self.budget.seconds_per_image, self._clock)

    # ---------------------------------------------------------------------------------------- operations

    def resolve(self, ref: ImageRef, *, deadline: Deadline | None = None) -> str:
        """The ``sha256:`` digest of the manifest the registry serves for ``ref`` (its tag, or its digest).

        For a digest reference the body is checked against that digest.
        """
        deadline = deadline or self.deadline()
        body = self._manifest(ref, ref.reference, IMAGE_MANIFEST_TYPES, deadline, what=f"image {ref}")
        if body is None:
            raise RegistryUnavailable(
                ref.registry, f"image {ref} not found (not pushed yet, or no such repository or tag)"
            )
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest is not None and digest != ref.digest:
            raise RegistryUnavailable(
                ref.registry,
                f"served a manifest for {ref.name}@{ref.digest} whose sha256 is {digest}: refused",
                retry_after=_BROKEN_REGISTRY_RETRY,
            )
        return digest

    def signatures(
        self, ref: ImageRef, digest: str, *, deadline: Deadline | None = None
    ) -> list[SignedPayload]:
        """The cosign signature layers of the image ``digest`` in ``ref``'s repository; [] when it has none.

        At most ``max_signature_layers`` simple-signing layers are fetched; layers of other
        media types, without a signature annotation or larger than ``max_payload_bytes``
        are skipped (they could not count). Each payload is checked against its descriptor.
        """
        if not SHA256_DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        deadline = deadline or self.deadline()
        tag = signature_tag(digest)
        what = f"signatures of {ref.name}@{digest}"
        body = self._manifest(ref, tag, SIGNATURE_MANIFEST_TYPES, deadline, what=what)
        if body is None:
            return []
        found = []
        for layer_digest, size, signature in self._signature_layers(ref, body, what):
            payload = self._blob(ref, layer_digest, size, deadline)
            found.append(SignedPayload(payload, signature, layer_digest))
        return found

    # ------------------------------------------------------------------------------------------ reading

    def _signature_layers(self, ref: ImageRef, body: bytes, what: str) -> list[tuple[str, int, str]]:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        layers = document.get("layers") if isinstance(document, Mapping) else None
        if not isinstance(layers, list):
            raise RegistryUnavailable(
                ref.registry,
                f"{what}: the signature manifest is not an image manifest",
                retry_after=_BROKEN_REGISTRY_RETRY,
            )
        usable: list[tuple[str, int, str]] = []
        for layer in layers:
            if len(usable) >= self.budget.max_signature_layers:
                break
            if not isinstance(layer, Mapping) or layer.get("mediaType") != SIMPLE_SIGNING_MEDIA_TYPE:
                continue
            digest, size, annotations = layer.get("digest"), layer.get("size"), layer.get("annotations")
            signature = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, Mapping) else None
            if (
                isinstance(digest, str)
                and SHA256_DIGEST.fullmatch(digest)
                and isinstance(size, int)
                and not isinstance(size, bool)
                and 0 <= size <= self.budget.max_payload_bytes
                and isinstance(signature, str)
            ):
                usable.append((digest, size, signature))
        return usable

    def _manifest(
        self, ref: ImageRef, reference: str, accept: Iterable[str], deadline: Deadline, *, what: str
    ) -> bytes | None:
        accepted = tuple(accept)
        url = f"https://{api_host(ref.registry)}/v2/{ref.repository}/manifests/{reference}"
        response = self._authorized(ref, url, {"Accept": ", ".join(accepted)}, deadline, what=what)
        status = response.status
        if status == 404:  # noqa: PLR2004 - HTTP status
            _discard(response)
            return None
        if 300 <= status < 400:  # noqa: PLR2004 - HTTP status
            _discard(response)
            raise RegistryUnavailable(
                ref.registry,
                f"{what}: answered a redirect for a manifest; gitward does not follow those",
                retry_after=_BROKEN_REGISTRY_RETRY,
            )
        self._check_ok(ref.registry, response, what)
        content_type = _content_type(response)
        if content_type not in accepted:
            _discard(response)
            raise RegistryUnavailable(
                ref.registry,
                f"{what}: media type {content_type[:100]!r} is not one gitward reads",
                retry_after=_BROKEN_REGISTRY_RETRY,
            )
        return self._read(ref.registry, response, self.budget.max_manifest_bytes, deadline, what=what)

    def _blob(self, ref: ImageRef, digest: str, size: int, deadline: Deadline) -> bytes:
        what = f"signature payload {digest} of {ref.name}"
        url = f"https://{api_host(ref.registry)}/v2/{ref.repository}/blobs/{digest}"
        response = self._authorized(ref, url, {"Accept": "*/*"}, deadline, what=what)
        for _ in range(self.budget.max_redirects):
            if not 300 <= response.status < 400:  # noqa: PLR2004 - HTTP status
                break
            location = str(response.headers.get("Location", ""))
            _discard(response)
            url = urllib.parse.urljoin(url, location)
            if not location or urllib.parse.urlsplit(url).scheme != "https":
                raise RegistryUnavailable(
                    ref.registry,
                    f"{what}: redirected to a non-HTTPS location",
                    retry_after=_BROKEN_REGISTRY_RETRY,
                )
            if (problem := elsewhere_problem(ref.registry, url)) is not None:
                raise RegistryUnavailable(
                    ref.registry, f"{what}: a redirect that {problem}", retry_after=_BROKEN_REGISTRY_RETRY
                )
            response = self._send(ref.registry, url, {"Accept": "*/*"}, deadline, what=what)  # no credentials
        if 300 <= response.status < 400:  # noqa: PLR2004 - HTTP status
            _discard(response)
            raise RegistryUnavailable(
                ref.registry, f"{what}: more than {self.budget.max_redirects} redirects"
            )
        if response.status == 404:  # noqa: PLR2004 - HTTP status
            _discard(response)
            raise RegistryUnavailable(ref.registry, f"{what}: the blob is missing from the repository")
        self._check_ok(ref.registry, response, what)
        body = self._read(
            ref.registry, response, size, deadline, what=f"{what} (its descriptor says {size} bytes)"
        )
        if len(body) != size or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryUnavailable(
                ref.registry,
                f"{what}: the bytes served do not match the layer's digest and size",
                retry_after=_BROKEN_REGISTRY_RETRY,
            )
        return body

    def _read(
        self, registry: str, response: urllib3.BaseHTTPResponse, limit: int, deadline: Deadline, *, what: str
    ) -> bytes:
        """The body, read in pieces and never past ``limit`` bytes or the deadline."""
        try:
            _check_body_headers(registry, response, limit, what)
            body = _read_within(registry, response, limit, deadline, what)
        except RegistryUnavailable:
            _discard(response)
            raise
        except (HTTPError, http.client.HTTPException, OSError) as error:
            _discard(response)
            raise self._transport_error(registry, error, what, deadline) from None
        response.release_conn()
        return body

    # ------------------------------------------------------------------------------------ transport, auth

    def _send(
        self, registry: str, url: str, headers: Mapping[str, str], deadline: Deadline, *, what: str
    ) -> urllib3.BaseHTTPResponse:
        """One GET, up to its response headers, cut at the deadline whatever the registry does.

        Socket timeouts bound each read, not their sum: a registry dripping its TLS handshake
        or headers one byte per timeout would hold the thread indefinitely. A watchdog shuts
        the connection down when the image's deadline passes.
        """
        if deadline.expired:
            raise RegistryUnavailable(registry, f"{what}: not received within the time budget")
        timeout = urllib3.Timeout(
            connect=deadline.bound(self.budget.connect_timeout_seconds),
            read=deadline.bound(self.budget.read_timeout_seconds),
        )
        sent = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", **headers}
        watch = _Watch()
        _WATCHED.watch = watch
        watchdog = threading.Timer(deadline.remaining(), watch.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            response = self._pool.request(
                "GET",
                url,
                headers=sent,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=False,
                timeout=timeout,
            )
        except (HTTPError, http.client.HTTPException, OSError) as error:
            raise self._transport_error(registry, error, what, deadline) from None
        finally:
            watchdog.cancel()
            _WATCHED.watch = None
        if watch.fired:  # cut mid-headers, the parser may have taken the end of the stream for their end
            _discard(response)
            raise RegistryUnavailable(registry, f"{what}: not received within the time budget")
        return response

    def _transport_error(
        self, registry: str, error: Exception, what: str, deadline: Deadline
    ) -> RegistryUnavailable:
        if deadline.expired:  # whatever broke, the watchdog or a timeout cut it at the deadline
            return RegistryUnavailable(registry, f"{what}: not received within the time budget")
        if isinstance(error, SSLError | ssl.SSLError):
            return RegistryUnavailable(
                registry,
                f"{what}: TLS failed; is the registry's certificate signed by a CA in spec.images.caFrom "
                "or the system roots?",
            )
        if isinstance(error, NewConnectionError):  # a subclass of urllib3's timeout error, for history's sake
            return RegistryUnavailable(registry, f"{what}: cannot connect")
        if isinstance(error, Urllib3TimeoutError | TimeoutError):
            return RegistryUnavailable(registry, f"{what}: timed out")
        return RegistryUnavailable(registry, f"{what}: no usable answer ({type(error).__name__})")

    def _check_ok(self, registry: str, response: urllib3.BaseHTTPResponse, what: str) -> None:
        status = response.status
        if status == 200:  # noqa: PLR2004 - HTTP status
            return
        _discard(response)
        if status == 429 or status >= 500:  # noqa: PLR2004 - HTTP status
            raise RegistryUnavailable(registry, f"{what}: HTTP {status}", retry_after=_retry_after(response))
        if status in (401, 403):
            raise RegistryUnavailable(
                registry, f"{what}: access refused (HTTP {status}); {self._login_hint()}"
            )
        raise RegistryUnavailable(registry, f"{what}: unexpected HTTP {status}")

    def _login_hint(self) -> str:
        if self.credentials.entries:
            return "check the credentials in spec.images.credentialsRef"
        return "the tenant has no registry credentials (spec.images.credentialsRef)"

    def _authorized(
        self, ref: ImageRef, url: str, headers: Mapping[str, str], deadline: Deadline, *, what: str
    ) -> urllib3.BaseHTTPResponse:
        """GET ``url`` from ``ref``'s registry, answering its authentication challenge once if it asks."""
        key = (ref.registry, ref.repository)
        cached = self._cached_authorization(key)
        sent = dict(headers)
        if cached is not None:
            sent["Authorization"] = cached
        response = self._send(ref.registry, url, sent, deadline, what=what)
        if response.status != 401:  # noqa: PLR2004 - HTTP status
            return response
        challenge = str(response.headers.get("WWW-Authenticate", ""))
        _discard(response)
        with self._lock:
            self._authorizations.pop(key, None)
        authorization = self._authorize(ref, challenge, deadline, what=what)
        response = self._send(
            ref.registry, url, {**headers, "Authorization": authorization}, deadline, what=what
        )
        if response.status in (401, 403):
            _discard(response)
            with self._lock:
                self._authorizations.pop(key, None)
            raise RegistryUnavailable(
                ref.registry,
                f"{what}: access refused (HTTP {response.status}, or no such repository); "
                f"{self._login_hint()}",
            )
        return response

    def _cached_authorization(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            cached = self._authorizations.get(key)
            if cached is None or cached.expires_at <= self._clock():
                self._authorizations.pop(key, None)
                return None
            return cached.header

    def _remember(self, key: tuple[str, str], header: str, seconds: float) -> None:
        with self._lock:
            self._authorizations[key] = _Authorization(header, self._clock() + seconds)

    def _authorize(self, ref: ImageRef, challenge: str, deadline: Deadline, *, what: str) -> str:
        scheme, params = parse_challenge(challenge)
        login = self.credentials.login_for(ref.registry, ref.repository)
        key = (ref.registry, ref.repository)
        if scheme == "basic":
            if login is None:
                raise RegistryUnavailable(ref.registry, f"{what}: asks for credentials; {self._login_hint()}")
            header = login.basic_authorization()
            self._remember(key, header, _MAX_CACHED_SECONDS)
            return header
        if scheme == "bearer":
            token, seconds = self._token(ref, params, login, deadline, what=what)
            header = f"Bearer {token}"
            self._remember(key, header, seconds)
            return header
        raise RegistryUnavailable(
            ref.registry,
            f"{what}: asks for authentication scheme {scheme[:40]!r}, which gitward does not speak",
        )

    def _token(
        self,
        ref: ImageRef,
        params: Mapping[str, str],
        login: RegistryLogin | None,
        deadline: Deadline,
        *,
        what: str,
    ) -> tuple[str, float]:
        """A bearer token from the realm the registry named, with the registry's login if there is one."""
        realm = urllib.parse.urlsplit(params.get("realm", ""))
        if realm.scheme != "https" or not realm.hostname:
            raise RegistryUnavailable(
                ref.registry,
                f"{what}: the token service must be an https URL",
                retry_after=_BROKEN_REGISTRY_RETRY,
            )
        if (problem := elsewhere_problem(ref.registry, realm.geturl())) is not None:
            raise RegistryUnavailable(
                ref.registry, f"{what}: the token service {problem}", retry_after=_BROKEN_REGISTRY_RETRY
            )
        query = urllib.parse.parse_qsl(realm.query)
        query.append(("scope", params.get("scope") or f"repository:{ref.repository}:pull"))
        if params.get("service"):
            query.append(("service", params["service"]))
        url = urllib.parse.urlunsplit(realm._replace(query=urllib.parse.urlencode(query), fragment=""))
        service = f"token service {realm.hostname}"
        headers = {"Accept": "application/json"}
        if login is not None:
            headers["Authorization"] = login.basic_authorization()
        response = self._send(ref.registry, url, headers, deadline, what=f"{what}: {service}")
        if response.status in (401, 403):
            _discard(response)
            raise RegistryUnavailable(
                ref.registry, f"{what}: the {service} refused (HTTP {response.status}); {self._login_hint()}"
            )
        self._check_ok(ref.registry, response, f"{what}: {service}")
        body = self._read(
            ref.registry, response, self.budget.max_token_bytes, deadline, what=f"{what}: {service}"
        )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        token = None
        if isinstance(document, Mapping):
            token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise RegistryUnavailable(ref.registry, f"{what}: the {service} answered without a usable token")
        lifetime = document.get("expires_in") if isinstance(document, Mapping) else None
        seconds = (
            float(lifetime) if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) else 0.0
        )
        seconds = min(_MAX_CACHED_SECONDS, max(float(_MIN_TOKEN_SECONDS), seconds)) - 10.0
        return token, seconds
