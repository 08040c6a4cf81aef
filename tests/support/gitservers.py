"""Real git servers on loopback for tests and benchmarks.

- :class:`HttpsGitServer`: ``git http-backend`` (the real smart-HTTP server,
  as CGI) behind HTTPS with basic auth, on 127.0.0.1 and a free port, with
  a certificate from a throwaway CA. It records which git commands clients
  sent, and can be made slower than a client's timeout.
- :class:`SshGitServer`: an SSH server built on asyncssh (no OpenSSH ``sshd``,
  no root) on 127.0.0.1 and a free port, with its own ed25519 host key and one
  authorized client key, running the real ``git-upload-pack`` for the real
  git client (which talks to it through OpenSSH's ``ssh``).

Both are context managers that stop their server on every path.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.server
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import asyncssh

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
        owner.started()
        try:
            self._answer(owner)
        finally:
            owner.finished()

    def _answer(self, owner: HttpsGitServer) -> None:
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
        self.in_flight = 0
        self.max_in_flight = 0
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

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1

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


UPLOAD_PACK = [path] if (path := shutil.which("git-upload-pack")) else ["git", "upload-pack"]
_CHUNK = 64 * 1024


def upload_pack_path(command: str | None) -> str | None:
    r"""The repository in ``git-upload-pack '<path>'`` as git sends it over SSH, else None.

    git quotes the path in single quotes (``'`` and ``!`` as ``'\''`` and ``'\!'``), with a
    leading ``/`` for ``ssh://`` URLs and without one for scp-like ``host:path``.
    """
    prefix = "git-upload-pack '"
    if not command or not command.startswith(prefix) or not command.endswith("'"):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    return words[1] if len(words) == 2 and words[1] else None


class _SshAuth(asyncssh.SSHServer):
    """Public-key authentication only: exactly one key, for exactly one user."""

    def __init__(self, owner: SshGitServer) -> None:
        self.owner = owner
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.owner.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncssh's signature
        if self.conn is not None:
            self.owner.connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:  # noqa: ARG002 - asyncssh's signature
        return True  # every user must authenticate, with the one key

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self.owner.user and key.public_data == self.owner.client_key.public_data


class SshGitServer:
    """An SSH server on loopback that lets one client key in and runs git-upload-pack for it.

    Built on asyncssh, in a thread with its own event loop: the real SSH protocol for OpenSSH's
    ``ssh`` client (which git runs), no root and no ``sshd`` needed.
    """

    def __init__(self, directory: Path, client_public_key: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.host_key = directory / "ssh_host_ed25519_key"
        key = asyncssh.generate_private_key("ssh-ed25519", comment="gitward-test-host")
        key.write_private_key(self.host_key)
        key.write_public_key(f"{self.host_key}.pub")
        self._host_keypair = key
        self.client_key = asyncssh.import_public_key(client_public_key)
        (directory / "authorized_keys").write_text(client_public_key + "\n")
        self.user = (
            os.environ.get("USER")
            or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        )
        self.home = Path.home() if Path.home().is_dir() else directory
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self.commands: list[str | None] = []
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[asyncio.Task[None]] = set()
        self._children: set[asyncio.subprocess.Process] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"ssh-git-server-{self.port}", daemon=True)
        self._stopped = False

    @property
    def host_public_key(self) -> str:
        return Path(f"{self.host_key}.pub").read_text().strip()

    def known_hosts_line(self) -> str:
        key_type, blob = self.host_public_key.split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {blob}"

    def url(self, repo_path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repo_path}"

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._thread.is_alive():
                try:
                    asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=15)
                finally:
                    self._loop.call_soon_threadsafe(self._loop.stop)
                    self._thread.join(timeout=15)
            elif not self._loop.is_closed():
                self._loop.close()
        finally:
            self._sock.close()

    # The event loop thread.

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(self._loop)
            for task in leftovers:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            sock=self._sock,
            server_factory=lambda: _SshAuth(self),
            server_host_keys=[self._host_keypair],
            process_factory=self._session,
            encoding=None,
            line_editor=False,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            login_timeout=30,
        )

    async def _stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for conn in list(self.connections):
            conn.abort()
        for child in list(self._children):
            if child.returncode is None:
                child.kill()
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncssh runs each session as a task
        self._sessions.add(task)
        try:
            await self._serve(process)
        finally:
            self._sessions.discard(task)

    async def _serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        self.commands.append(process.command)
        repo = upload_pack_path(process.command)
        if repo is None:
            process.stderr.write(
                f"gitward test SSH server: only git-upload-pack '<path>' is served, "
                f"not {process.command!r}\n".encode()
            )
            process.exit(1)
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
        }
        if protocol := process.env.get("GIT_PROTOCOL"):
            env["GIT_PROTOCOL"] = protocol
        child = await asyncio.create_subprocess_exec(
            *UPLOAD_PACK,
            repo,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=self.home,
        )
        self._children.add(child)
        assert child.stdin is not None  # all three are pipes
        assert child.stdout is not None
        assert child.stderr is not None
        feed = asyncio.create_task(_feed(process.stdin, child.stdin))
        try:
            await asyncio.gather(_pump(child.stdout, process.stdout), _pump(child.stderr, process.stderr))
            status = await child.wait()
        finally:
            feed.cancel()
            if child.returncode is None:
                child.kill()
            await child.wait()
            self._children.discard(child)
        if status < 0:
            process.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        else:
            process.exit(status)


async def _feed(channel: asyncssh.SSHReader[bytes], pipe: asyncio.StreamWriter) -> None:
    """The client's bytes to the process's stdin, then EOF."""
    try:
        while chunk := await channel.read(_CHUNK):
            pipe.write(chunk)
            await pipe.drain()
    except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
        pass
    finally:
        pipe.close()


async def _pump(pipe: asyncio.StreamReader, channel: asyncssh.SSHWriter[bytes]) -> None:
    """The process's stdout or stderr to the client, until the process closes it."""
    while chunk := await pipe.read(_CHUNK):
        channel.write(chunk)
        await channel.drain()


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port with nothing listening on it."""
    yield free_port()


class _CutError(Exception):
    """The response was cut off on purpose."""


class _CuttingWriter:
    """Passes a response through, except a fetch's pack: half of it, then the connection is closed."""

    def __init__(self, handler: _OutageHandler, raw: Any) -> None:
        self.handler = handler
        self.raw = raw
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == 1 or not self.handler.fetching:  # the first write is the status and headers
            return int(self.raw.write(data))
        self.raw.write(data[: len(data) // 2])
        self.raw.flush()
        connection = self.handler.connection
        if isinstance(connection, ssl.SSLSocket):
            connection = connection.unwrap()  # a clean TLS close: the client sees a short transfer
        connection.close()
        raise _CutError

    def flush(self) -> None:
        self.raw.flush()

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def close(self) -> None:
        self.raw.close()


class _OutageHandler(_Handler):
    """The real git server, unless its owner hangs requests, answers them with one status, or cuts packs."""

    fetching = False

    def _body(self) -> bytes:
        body = super()._body()
        plain = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        self.fetching = b"command=fetch" in plain
        return body

    def _answer(self, owner: HttpsGitServer) -> None:
        assert isinstance(owner, OutageHttpsGitServer)  # only that server uses this handler
        if owner.cutting:
            # One handler serves every request of a keep-alive connection: wrap its socket writer once.
            raw = self.wfile.raw if isinstance(self.wfile, _CuttingWriter) else self.wfile
            self.wfile = _CuttingWriter(self, raw)  # type: ignore[assignment]
            try:
                super()._answer(owner)
            except (_CutError, OSError):
                self.close_connection = True
            return
        if not owner.answering.is_set():
            owner.record(self.command, self.path, "hung")
            owner.answering.wait()  # until answer(), or the server stops; then the connection just closes
            self.close_connection = True
            return
        status = owner.status
        if status is not None:
            if self.command == "POST":
                self._body()
            owner.record(self.command, self.path, str(status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return
        super()._answer(owner)


class OutageHttpsGitServer(HttpsGitServer):
    """:class:`HttpsGitServer` that can go down and come back on the same port, hang, or answer 5xx.

    - :meth:`stop` closes the listening socket (clients get "connection refused"); :meth:`start`
      listens again on the same port, so URLs, the tenant's source rule and the CA stay valid.
    - :meth:`hang`: every request is read and never answered (until :meth:`answer` or a stop).
    - :meth:`fail` with a status: every request is answered with it (``503``, ``429``) until
      :meth:`answer`.
    - :meth:`cut`: every fetch gets half of its pack, then the connection closes (an early EOF).

    Requests that were hung or failed are recorded as ``"hung"`` or the status in :attr:`requests`.
    """

    def __init__(self, root: Path, tls_dir: Path, **credentials: str) -> None:
        super().__init__(root, tls_dir, **credentials)
        self._tls_dir = tls_dir
        self.status: int | None = None
        self.cutting = False
        self.answering = threading.Event()
        self.answering.set()
        self._server.RequestHandlerClass = _OutageHandler
        self.running = False

    def __enter__(self) -> Self:
        super().__enter__()
        self.running = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.answering.set()  # no handler thread is left waiting
        if self.running:
            self.stop()

    def stop(self) -> None:
        """Stop listening: a client now gets "connection refused" on this port."""
        self.answering.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self.running = False

    def start(self) -> None:
        """Listen again on the same port, with the same certificate and repositories."""
        server = _Server(("127.0.0.1", self.port), _OutageHandler)
        server.owner = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._tls_dir / "server.crt", self._tls_dir / "server.key")
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def hang(self) -> None:
        """Accept connections and read requests, but answer none."""
        self.answering.clear()

    def fail(self, status: int) -> None:
        """Answer every request with ``status`` (no body)."""
        self.status = status
        self.answering.set()

    def cut(self) -> None:
        """Send every fetch half of its pack, then close the connection."""
        self.cutting = True

    def answer(self) -> None:
        """Serve git again: no hanging, no forced status, no cut packs."""
        self.status = None
        self.cutting = False
        self.answering.set()

    def count(self, command: str) -> int:
        """How many requests were recorded as ``command`` (``"hung"``, ``"503"``, ``"ls-refs"``, ...)."""
        return self.commands().count(command)
