"""A real OCI registry on loopback, images pushed through its HTTP API, and real cosign.

- :class:`Registry`: the CNCF Distribution ``registry`` binary (the one behind
  most registries people run), built by ``hack/cluster build`` at the version
  pinned in hack/tools/registry, on 127.0.0.1 and a free port, behind TLS from
  a throwaway CA and htpasswd basic auth, its storage in a temporary
  directory. A context manager that stops the server on every path.
- :func:`push_image`: a small synthetic OCI image (config, one layer, an image
  manifest) uploaded the way any client does, so the digest is the registry's own.
- :func:`cosign_keypair`, :func:`cosign_sign`, :func:`cosign_verify`: the real
  cosign v2 (pinned in hack/tools/cosign), which writes the classic signature
  layout (tag ``sha256-<digest>.sig``, a simple-signing payload layer annotated
  ``dev.cosignproject.cosign/signature``). It runs offline: no transparency log,
  no Fulcio, no TUF root; only the registry on 127.0.0.1 is reachable (every
  other address goes to a proxy on a closed port), with a throwaway HOME,
  DOCKER_CONFIG and TUF_ROOT per run. ``cosign_verify`` is an oracle to
  cross-check gitward's own verifier against.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import io
import json
import os
import secrets
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Self

import bcrypt

from support.gitservers import free_port, make_tls
from support.sops import ToolError, offline_env, run_tool
from support.toolpaths import cosign_binary, registry_binary

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """The real Distribution registry over TLS with htpasswd basic auth, on 127.0.0.1.

    ``host`` is ``127.0.0.1:PORT`` (what image references start with), ``ca_path`` the CA
    certificate file that signed its serving certificate and ``ca_pem`` its bytes.
    """

    def __init__(
        self, directory: Path, *, username: str = "gitward", password: str = "r3gistry-Passw0rd"
    ) -> None:
        self.directory = directory
        self.username = username
        self.password = password
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_path, self._cert, self._key = make_tls(directory / "tls")
        self.ca_pem = self.ca_path.read_bytes()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"https://{self.host}"
        self.log_path = directory / "registry.log"
        self._process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------- lifecycle

    def _write_config(self) -> Path:
        htpasswd = self.directory / "htpasswd"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
        htpasswd.write_text(f"{self.username}:{hashed}\n")
        storage = self.directory / "storage"
        storage.mkdir(exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": secrets.token_hex(16),
                "tls": {"certificate": str(self._cert), "key": str(self._key)},
                "draintimeout": "1s",
            },
            "auth": {"htpasswd": {"realm": "gitward-test", "path": str(htpasswd)}},
        }
        path = self.directory / "config.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def __enter__(self) -> Self:
        config = self._write_config()
        env = offline_env(self.directory / "home", {"OTEL_TRACES_EXPORTER": "none"})
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [registry_binary(), "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.directory,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"registry exited {self._process.returncode}:\n{self.log_tail()}")
            try:
                status, _, _ = self.request("GET", "/v2/", auth=False)
            except OSError:
                time.sleep(0.05)
                continue
            if status == 401:  # up, and asking for credentials
                return
            raise RuntimeError(f"registry answered /v2/ without credentials with {status}")
        raise TimeoutError(f"registry not answering after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the registry's process group (its own session), SIGKILL it if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ----------------------------------------------------------------- client

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting this registry's CA only."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def authorization(self) -> str:
        """The ``Authorization`` header value for this registry's user."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTP request to the registry (no redirects followed): (status, headers, body)."""
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ssl_context(), timeout=30
        )
        try:
            sent = dict(headers or {})
            if auth:
                sent["Authorization"] = self.authorization()
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def reference(self, repository: str, digest: str) -> str:
        """``127.0.0.1:PORT/repository@sha256:...``: an image reference pinned to a digest."""
        return f"{self.host}/{repository}@{digest}"

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """A manifest by tag or digest, as stored: (bytes, content type)."""
        status, headers, body = self.request(
            "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
        )
        if status != 200:
            raise AssertionError(f"GET manifest {repository}:{reference}: {status} {body[:300]!r}")
        return body, headers.get("Content-Type", "")

    def docker_config(self, directory: Path) -> Path:
        """Write a ``config.json`` with an ``auths`` entry for this registry; returns the directory.

        What ``DOCKER_CONFIG`` points at for cosign (and any go-containerregistry client).
        """
        directory.mkdir(parents=True, exist_ok=True)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        (directory / "config.json").write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return directory


# ------------------------------------------------------------------- pushing


def upload_blob(registry: Registry, repository: str, blob: bytes) -> str:
    """Upload one blob (POST a session, PUT the bytes with their digest); returns its digest."""
    digest = sha256_digest(blob)
    status, headers, body = registry.request("POST", f"/v2/{repository}/blobs/uploads/")
    if status != 202:
        raise AssertionError(f"starting a blob upload to {repository}: {status} {body[:300]!r}")
    location = urllib.parse.urlsplit(headers["Location"])
    query = [*urllib.parse.parse_qsl(location.query), ("digest", digest)]
    target = f"{location.path}?{urllib.parse.urlencode(query)}"
    status, _, body = registry.request(
        "PUT", target, body=blob, headers={"Content-Type": "application/octet-stream"}
    )
    if status != 201:
        raise AssertionError(f"uploading blob {digest} to {repository}: {status} {body[:300]!r}")
    return digest


def synthetic_layer(content: bytes) -> bytes:
    """A gzipped tar with one file holding ``content``; byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("app/content.txt")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def push_image(registry: Registry, repository: str, tag: str, content: bytes | None = None) -> str:
    """Push a small OCI image (config, one layer, image manifest) under ``tag``; returns its ``sha256:`` digest.

    Without ``content`` the layer holds the repository, the tag and a random nonce, so every push
    is a new image; with it, the same content gives the same digest wherever it is pushed.
    """
    if content is None:
        content = f"{repository}:{tag}\n{secrets.token_hex(16)}\n".encode()
    layer = synthetic_layer(content)
    diff_id = sha256_digest(gzip.decompress(layer))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    config_descriptor = {"mediaType": OCI_CONFIG, "digest": upload_blob(registry, repository, config)}
    layer_descriptor = {"mediaType": OCI_LAYER_GZIP, "digest": upload_blob(registry, repository, layer)}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {**config_descriptor, "size": len(config)},
            "layers": [{**layer_descriptor, "size": len(layer)}],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    status, headers, body = registry.request(
        "PUT", f"/v2/{repository}/manifests/{tag}", body=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    if status != 201:
        raise AssertionError(f"pushing manifest {repository}:{tag}: {status} {body[:300]!r}")
    digest = sha256_digest(manifest)
    if headers.get("Docker-Content-Digest") != digest:
        raise AssertionError(
            f"registry says {headers.get('Docker-Content-Digest')}, the manifest is {digest}"
        )
    return digest


# -------------------------------------------------------------------- cosign


def _cosign_env(home: Path, registry: Registry | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Offline cosign: a throwaway HOME and TUF root, only the registry's CA, its credentials."""
    env = offline_env(
        home,
        {
            # cosign v2's verify looks for the Sigstore trusted root even when given a key and told to
            # ignore the transparency log (it only warns when it cannot have it). With a mirror of our own
            # and no root.json cached for it in an empty TUF_ROOT, it stops before any request; by default
            # it would fetch from the public TUF CDN.
            "TUF_ROOT": str(home / "tuf"),
            "TUF_MIRROR": f"http://127.0.0.1:{free_port()}",
            "SIGSTORE_NO_CACHE": "true",
            "COSIGN_PASSWORD": "",
            **(extra or {}),
        },
    )
    if registry is not None:
        env["DOCKER_CONFIG"] = str(registry.docker_config(home / "docker"))
        # Go reads the trusted roots from here: the registry's CA and nothing else.
        env["SSL_CERT_FILE"] = str(registry.ca_path)
    return env


def cosign_keypair(directory: Path, password: str = "", name: str = "cosign") -> tuple[Path, bytes]:
    """A cosign key pair from the real ``cosign generate-key-pair``: (private key path, public key PEM).

    The private key is written encrypted with ``password`` (cosign always encrypts it) to
    ``directory/<name>.key``, the public key to ``directory/<name>.pub``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gitward-cosign-") as tmp:
        run_tool(
            [cosign_binary(), "generate-key-pair", "--output-key-prefix", str(directory / name)],
            env=_cosign_env(Path(tmp), None, {"COSIGN_PASSWORD": password}),
            cwd=Path(tmp),
        )
    return directory / f"{name}.key", (directory / f"{name}.pub").read_bytes()


def cosign_sign(registry: Registry, reference_with_digest: str, key_path: Path, password: str = "") -> None:
    """Sign an image with the real cosign and a key, offline, into the registry's classic ``.sig`` tag."""
    if "@sha256:" not in reference_with_digest:
        raise ValueError(f"sign a digest, not a tag: {reference_with_digest}")
    with tempfile.TemporaryDirectory(prefix="gitward-cosign-") as tmp:
        run_tool(
            [cosign_binary(), "sign", "--key", str(key_path), "--tlog-upload=false", "--yes",
             reference_with_digest],
            env=_cosign_env(Path(tmp), registry, {"COSIGN_PASSWORD": password}),
            cwd=Path(tmp),
        )  # fmt: skip


# cosign's exit codes (cmd/cosign/errors) for an image without signatures (10) and for signatures
# none of which verifies with the key (12), with the messages that go with them.
_NOT_VERIFIED = {10: "no signatures found", 12: "no matching signatures"}


def cosign_verify(registry: Registry, reference: str, public_key: Path | bytes) -> bool:
    """Whether the real ``cosign verify --key`` (transparency log ignored) accepts the image's signatures.

    False only when cosign says no signature matches (or there is none); any other failure
    (the registry unreachable, a bad key file) raises :class:`ToolError`, so an oracle that
    could not run is never read as a verdict.
    """
    with tempfile.TemporaryDirectory(prefix="gitward-cosign-") as tmp:
        home = Path(tmp)
        if isinstance(public_key, bytes):
            (home / "key.pub").write_bytes(public_key)
            public_key = home / "key.pub"
        try:
            run_tool(
                [cosign_binary(), "verify", "--key", str(public_key), "--insecure-ignore-tlog=true",
                 "--offline=true", reference],
                env=_cosign_env(home, registry),
                cwd=home,
            )  # fmt: skip
        except ToolError as error:
            if _NOT_VERIFIED.get(error.returncode, "\0") in error.stderr:
                return False
            raise
    return True
