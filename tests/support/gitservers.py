"""Real git servers on loopback for tests and benchmarks.

- :class:`HttpsGitServer`: ``git http-backend`` (the real smart-HTTP server,
  as CGI) behind HTTPS with basic auth, on 127.0.0.1 and a free port, with
  a certificate from a throwaway CA. It records which git commands clients
  sent, and can be made slower than a client's timeout.
- :class:`SshGitServer`: a real ``sshd`` on 127.0.0.1 and a free port, with
  its own host key and one authorized client key.

Both are context managers that stop their server on every path.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

HTTP_BACKEND = Path(
    subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
)
HTTP_BACKEND = HTTP_BACKEND / "git-http-backend"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1; returns (ca.crt, server.crt, server.key)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
            "-subj", "/CN=gitward-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", "server.crt", "-extfile", "ext")  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        owner = self.server.owner
        body = self._body() if self.command == "POST" else b""
        if owner.delay:
            time.sleep(owner.delay)
        expected = "Basic " + base64.b64encode(f"{owner.username}:{owner.password}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            owner.record(self.command, self.path, "401")
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="gitward-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        plain = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        command = "fetch" if b"command=fetch" in plain else "ls-refs" if b"command=ls-refs" in plain else ""
        owner.record(self.command, self.path, command or "other")
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "HOME": str(owner.root),
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": owner.username,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        result = subprocess.run([str(HTTP_BACKEND)], input=body, env=env, capture_output=True, check=False)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        owner.count_bytes(len(payload))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpsGitServer


class HttpsGitServer:
    """Smart HTTP git over TLS with basic auth, serving the bare repositories under ``root``."""

    def __init__(
        self, root: Path, tls_dir: Path, *, username: str = "gitward", password: str = "s3cret-Passw0rd"
    ) -> None:
        self.root = root
        self.username = username
        self.password = password
        self.delay = 0.0
        self.requests: list[tuple[str, str, str]] = []
        self.sent_bytes = 0
        self._lock = threading.Lock()
        self.ca_cert, cert, key = make_tls(tls_dir)
        self.port = free_port()
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.owner = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def record(self, method: str, path: str, command: str) -> None:
        with self._lock:
            self.requests.append((method, path, command))

    def count_bytes(self, count: int) -> None:
        with self._lock:
            self.sent_bytes += count

    def url(self, repo: str) -> str:
        return f"https://127.0.0.1:{self.port}/{repo}"

    def commands(self) -> list[str]:
        with self._lock:
            return [command for _, _, command in self.requests]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class SshGitServer:
    """A real sshd on loopback that lets one client key in and runs git-upload-pack for it."""

    def __init__(self, directory: Path, client_public_key: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.host_key = directory / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        (directory / "authorized_keys").write_text(client_public_key + "\n")
        (directory / "authorized_keys").chmod(0o600)
        self.port = free_port()
        self.user = (
            os.environ.get("USER")
            or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        )
        self.config = directory / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                    f"PidFile {directory / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host_public_key(self) -> str:
        return Path(f"{self.host_key}.pub").read_text().strip()

    def known_hosts_line(self) -> str:
        key_type, blob = self.host_public_key.split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {blob}"

    def url(self, repo_path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repo_path}"

    def __enter__(self) -> Self:
        Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"sshd exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                    ) from None
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("sshd did not start listening")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port with nothing listening on it."""
    yield free_port()
