"""A git server that does not answer is SourceUnavailable, dated from its first failure; one that refuses is FetchFailed.

Every cause is provoked for real against servers on loopback, with the real
git (curl for https, OpenSSH for ssh): nothing listening, a name that does
not resolve, TLS cut short, a reset, HTTP 5xx and 429, a transfer or a pack
cut off, a server that never answers (gitward's own wall-clock timeout).
What git says for each is what ``source/runner.py`` matches; the comments
quote git 2.39 with curl/GnuTLS and OpenSSH 9. A server that answered and
refused (401, 403, 404, a certificate that does not verify) stays
FetchFailed. :class:`~gitward.source.shared.SharedSources` dates an outage
from its first failure until the server answers again, so the message, and
the status that repeats it, stays the same from one retry to the next.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitward import processes
from gitward.api.conditions import Reason
from gitward.api.resources import Namespace, SourceRule
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.source import git, urls
from gitward.source.allow import AllowedSource
from gitward.source.runner import Unavailable, kube_time, steady
from gitward.source.shared import SharedSources, SourceKey
from support.gitservers import OutageHttpsGitServer, closed_port, make_tls
from support.signing import WorkRepo

SINCE = re.compile(r"^the git server has not answered since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ): ")
# A pinned host key for 127.0.0.1: an ssh source needs one before gitward connects at all.
KNOWN_HOSTS = "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

Handler = Callable[[socket.socket, threading.Event], object]


def source(url: str) -> AllowedSource:
    return AllowedSource(
        url=urls.parse(url), branch="main", rule=SourceRule(url, ("main",)), target_namespace=Namespace("t")
    )


def options(tmp_path: Path, timeout: float = 20.0) -> git.FetchOptions:
    return git.FetchOptions(cache_root=tmp_path / "cache", timeout=timeout)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key) for 127.0.0.1."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def listening(handler: Handler, *, tls: tuple[Path, Path, Path] | None = None) -> Iterator[int]:
    """A TCP (or TLS) server on loopback that treats every connection with ``handler``; stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    stop = threading.Event()
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[1], tls[2])
    workers: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(30)
            handler(context.wrap_socket(conn, server_side=True) if context else conn, stop)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            worker = threading.Thread(target=serve, args=(conn,), daemon=True)
            workers.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        acceptor.join(5)
        sock.close()
        for worker in workers:
            worker.join(5)


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
        data += chunk


def read_line(conn: socket.socket) -> None:
    data = b""
    while b"\n" not in data and (chunk := conn.recv(1024)):
        data += chunk


def answer(status: str, *headers: str) -> Handler:
    def handle(conn: socket.socket, _: threading.Event) -> None:
        read_request(conn)
        head = "".join(f"{h}\r\n" for h in headers)
        conn.sendall(f"HTTP/1.1 {status}\r\n{head}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())

    return handle


def close(conn: socket.socket, _: threading.Event) -> None:
    conn.close()


def reset(conn: socket.socket, _: threading.Event) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def reset_after_request(conn: socket.socket, stop: threading.Event) -> None:
    read_request(conn)
    reset(conn, stop)


def close_after_request(conn: socket.socket, _: threading.Event) -> None:
    read_request(conn)
    conn.close()  # no TLS close_notify: the connection just ends


def short_transfer(conn: socket.socket, _: threading.Event) -> None:
    """Announce 1000 bytes, send 30, close cleanly."""
    read_request(conn)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n"
        b"Content-Length: 1000\r\n\r\n001e# service=git-upload-pack\n"
    )
    assert isinstance(conn, ssl.SSLSocket)
    conn.unwrap().close()


def empty_reply(conn: socket.socket, _: threading.Event) -> None:
    read_request(conn)
    assert isinstance(conn, ssl.SSLSocket)
    conn.unwrap().close()


def hang(conn: socket.socket, stop: threading.Event) -> None:
    read_request(conn)
    stop.wait(30)


def close_after_client_banner(conn: socket.socket, _: threading.Event) -> None:
    read_line(conn)
    conn.shutdown(socket.SHUT_RDWR)


def banner_then_close(conn: socket.socket, _: threading.Event) -> None:
    conn.sendall(b"SSH-2.0-Test\r\n")
    conn.close()


def never_greet(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(30)


def head_error(url: str, credentials: git.Credentials | None, opts: git.FetchOptions) -> GitwardError:
    with pytest.raises(GitwardError) as raised:
        git.remote_head(source(url), credentials=credentials, options=opts)
    return raised.value


def https(tls: tuple[Path, Path, Path]) -> git.Credentials:
    return git.Credentials(username="deploy", password="s3cret-Passw0rd", ca_cert=tls[0].read_text())


def assert_unavailable(error: GitwardError, *fragments: str) -> str:
    """SourceUnavailable, retried, saying since when; returns git's part of the message."""
    assert isinstance(error, Unavailable), error
    assert isinstance(error, Waiting)
    assert error.reason is Reason.SOURCE_UNAVAILABLE
    since = SINCE.match(error.message)
    assert since, error.message
    assert since.group(1) == error.since
    detail = error.message[since.end() :]
    assert detail == error.detail
    for fragment in fragments:
        assert fragment.lower() in detail.lower(), detail
    assert "s3cret-Passw0rd" not in str(error)
    return detail


# (what the server does, TLS on the server side, what git says: fragments of it that every build shares)
HTTPS_UNANSWERED = {
    # git says "The requested URL returned error: 503" (and 502, 504, 500, 429): not now, rather than no.
    "503": (answer("503 Service Unavailable", "Retry-After: 5"), True, ("returned error: 503",)),
    "502": (answer("502 Bad Gateway"), True, ("returned error: 502",)),
    "504": (answer("504 Gateway Timeout"), True, ("returned error: 504",)),
    "500": (answer("500 Internal Server Error"), True, ("returned error: 500",)),
    "429": (answer("429 Too Many Requests", "Retry-After: 5"), True, ("returned error: 429",)),
    # git says, with GnuTLS, "gnutls_handshake() failed: The TLS connection was non-properly terminated."
    # with curl's OpenSSL backend (not the one here), "OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to"
    "closed before TLS": (close, False, ()),
    # git says "Send failure: Connection reset by peer"
    "reset before TLS": (reset, False, ("reset",)),
    # git says "GnuTLS recv error (-110): The TLS connection was non-properly terminated."
    "closed after the request": (close_after_request, True, ()),
    # git says "Recv failure: Connection reset by peer"
    "reset after the request": (reset_after_request, True, ("reset",)),
    # git says "transfer closed with 970 bytes remaining to read": the count changes, the message must not
    "transfer cut short": (short_transfer, True, ("transfer closed with some bytes remaining to read",)),
    # git says "Empty reply from server"
    "empty reply": (empty_reply, True, ()),
}


@pytest.mark.parametrize("case", list(HTTPS_UNANSWERED))
def test_an_https_server_that_does_not_answer_is_source_unavailable(tmp_path, tls, case):
    """5xx, 429, a reset, TLS or a transfer cut short: SourceUnavailable, with git's words."""
    handler, with_tls, fragments = HTTPS_UNANSWERED[case]
    with listening(handler, tls=tls if with_tls else None) as port:
        error = head_error(f"https://127.0.0.1:{port}/team/web.git", https(tls), options(tmp_path))
    detail = assert_unavailable(error, *fragments)
    assert detail.startswith(f"git ls-remote https://127.0.0.1:{port}/team/web.git: ")


def test_nothing_listening_is_source_unavailable_at_once(tmp_path, tls):
    """Connection refused, over https and ssh: SourceUnavailable, without waiting for a timeout."""
    started = time.monotonic()
    with closed_port() as port:
        # git says "Failed to connect to 127.0.0.1 port <port> after 0 ms: Couldn't connect to server"
        over_https = head_error(f"https://127.0.0.1:{port}/web.git", https(tls), options(tmp_path))
        # git says "ssh: connect to host 127.0.0.1 port <port>: Connection refused"
        over_ssh = head_error(
            f"ssh://git@127.0.0.1:{port}/web.git", git.Credentials(known_hosts=KNOWN_HOSTS), options(tmp_path)
        )
    https_detail = assert_unavailable(over_https, f"127.0.0.1 port {port}")
    assert " ms:" not in https_detail  # "after 0 ms" differs between attempts; it is taken out
    assert_unavailable(over_ssh, "connection refused")
    assert time.monotonic() - started < 10


def test_a_name_that_does_not_resolve_is_source_unavailable(tmp_path, tls):
    """.invalid never resolves: curl's "Could not resolve host", ssh's "Could not resolve hostname"."""
    over_https = head_error("https://gitward-test.invalid/web.git", https(tls), options(tmp_path))
    over_ssh = head_error(
        "ssh://git@gitward-test.invalid/web.git", git.Credentials(known_hosts=KNOWN_HOSTS), options(tmp_path)
    )
    assert_unavailable(over_https, "could not resolve host")
    assert_unavailable(over_ssh, "could not resolve host")


SSH_UNANSWERED = {
    # git says "kex_exchange_identification: Connection closed by remote host"
    # git says "Connection closed by 127.0.0.1 port <port>"
    "closed after the client's banner": (close_after_client_banner, ("connection closed by",)),
    # git says "kex_exchange_identification: read: Connection reset by peer"
    "reset": (reset, ("connection reset",)),
    # git says "ssh_dispatch_run_fatal: Connection to 127.0.0.1 port <port>: Broken pipe", or, as the
    # timing falls, "Connection reset by 127.0.0.1 port <port>"
    "banner, then closed": (banner_then_close, ()),
}


@pytest.mark.parametrize("case", list(SSH_UNANSWERED))
def test_an_ssh_server_that_does_not_answer_is_source_unavailable(tmp_path, case):
    """The SSH connection closed or reset before git could speak: SourceUnavailable."""
    handler, fragments = SSH_UNANSWERED[case]
    with listening(handler) as port:
        error = head_error(
            f"ssh://git@127.0.0.1:{port}/web.git", git.Credentials(known_hosts=KNOWN_HOSTS), options(tmp_path)
        )
    assert_unavailable(error, *fragments)


def test_a_server_that_never_answers_is_cut_off_at_the_timeout_as_source_unavailable(tmp_path, tls):
    """gitward's own wall clock: over https the request is read and never answered; over ssh no banner."""
    started = time.monotonic()
    with listening(hang, tls=tls) as port:
        over_https = head_error(f"https://127.0.0.1:{port}/web.git", https(tls), options(tmp_path, 1.0))
    with listening(never_greet) as port:
        # ssh's ConnectTimeout is the same second: "Connection timed out during banner exchange",
        # or gitward's wall clock first; both are SourceUnavailable.
        over_ssh = head_error(
            f"ssh://git@127.0.0.1:{port}/web.git",
            git.Credentials(known_hosts=KNOWN_HOSTS),
            options(tmp_path, 1.0),
        )
    assert_unavailable(over_https, "timed out after 1s")
    assert_unavailable(over_ssh)
    assert time.monotonic() - started < 8


@pytest.fixture
def repo(tmp_path: Path) -> WorkRepo:
    work = WorkRepo.create(tmp_path / "work")
    work.bare_remote("origin", tmp_path / "srv" / "team" / "web.git")
    # Incompressible, so the pack is large enough to be cut in the middle.
    work.commit({"deploy/data.txt": os.urandom(100_000).hex() + "\n"}, message="first")
    work.push()
    return work


@pytest.fixture
def server(tmp_path: Path, repo: WorkRepo) -> Iterator[OutageHttpsGitServer]:
    with OutageHttpsGitServer(tmp_path / "srv", tmp_path / "tls") as started:
        yield started


def credentials(server: OutageHttpsGitServer) -> git.Credentials:
    return git.Credentials(
        username=server.username, password=server.password, ca_cert=server.ca_cert.read_text()
    )


def test_a_pack_cut_off_mid_fetch_is_source_unavailable_not_rejected(tmp_path, repo, server):
    """The connection drops halfway through the pack: "early EOF", retried; not SourceRejected for that head."""
    server.cut()
    with pytest.raises(GitwardError) as raised:
        git.fetch(
            source(server.url("team/web.git")),
            app_uid="app",
            credentials=credentials(server),
            options=options(tmp_path),
            head=repo.head(),
        )
    # git says "error: RPC failed; curl 18 transfer closed with 109855 bytes remaining to read"
    # git says "fetch-pack: unexpected disconnect while reading sideband packet" "fatal: early EOF"
    assert_unavailable(raised.value, "early eof")
    assert not list((next((tmp_path / "cache").glob("*/objects/pack"))).glob("tmp_*"))


def refusal(
    handler: Handler, tmp_path: Path, tls: tuple[Path, Path, Path], creds: git.Credentials
) -> GitwardError:
    with listening(handler, tls=tls) as port:
        return head_error(f"https://127.0.0.1:{port}/web.git", creds, options(tmp_path))


def test_a_server_that_answers_and_refuses_is_still_fetch_failed(tmp_path, tls):
    """401, 403, 404 and a certificate that does not verify are answers: FetchFailed, not SourceUnavailable."""
    creds = https(tls)
    unauthorized = refusal(
        answer("401 Unauthorized", 'WWW-Authenticate: Basic realm="x"'), tmp_path, tls, creds
    )
    forbidden = refusal(answer("403 Forbidden"), tmp_path, tls, creds)
    missing = refusal(answer("404 Not Found"), tmp_path, tls, creds)  # "repository '...' not found"
    # The server answered with an identity that cannot be trusted: that needs a human (a CA in the
    # Secret, a renewed certificate), and an impostor must not pass for a server that is down.
    # git says "server certificate verification failed. CAfile: none CRLfile: none"
    # with curl's OpenSSL backend, "SSL certificate problem: unable to get local issuer certificate"
    untrusted = refusal(answer("200 OK"), tmp_path, tls, git.Credentials(username="deploy", password="p"))
    for error in (unauthorized, forbidden, missing, untrusted):
        assert not isinstance(error, Unavailable), error
        assert error.reason is Reason.FETCH_FAILED, error
    assert "authentication failed" in unauthorized.message
    assert "authentication failed" in forbidden.message
    assert "not found" in missing.message
    assert "certificate" in untrusted.message


def test_only_commands_that_talk_to_the_server_time_out_as_source_unavailable(tmp_path):
    """A local git command out of time says nothing about the server; a CPU overrun stays SourceTooLarge."""
    with git.throwaway_home() as home:
        runner = git.GitRunner(options(tmp_path, 7.0), None, home)
        timed_out = processes.Finished(None, b"", b"", processes.Ended.TIMED_OUT)
        with pytest.raises(Waiting) as local:
            runner.check(timed_out, what="git ls-tree")
        with pytest.raises(Unavailable) as remote:
            runner.check(timed_out, what="git fetch x", remote=True)
        with pytest.raises(Stalled) as cpu:
            runner.check(
                processes.Finished(None, b"", b"", processes.Ended.CPU_LIMIT), what="git fetch", remote=True
            )
    assert local.value.reason is Reason.FETCH_FAILED
    assert not isinstance(local.value, Unavailable)
    assert local.value.message == "git ls-tree: timed out after 7s"
    assert remote.value.detail == "git fetch x: timed out after 7s"
    assert cpu.value.reason is Reason.SOURCE_TOO_LARGE


def test_the_message_is_scrubbed_and_steady_between_attempts():
    """Credentials are replaced; milliseconds and byte counts that change from one attempt to the next are not shown."""
    creds = git.Credentials(username="deploy", password="hunter2-Passw0rd")
    with git.throwaway_home() as home:
        runner = git.GitRunner(git.FetchOptions(cache_root=home / "c"), creds, home)
        first, second = (
            runner.failure(
                "git ls-remote h",
                f"fatal: unable to access 'https://deploy:hunter2-Passw0rd@h/': Failed to connect to h port 443 "
                f"after {ms} ms: Couldn't connect to server\n",
            )
            for ms in (0, 1023)
        )
    assert isinstance(first, Unavailable)
    assert isinstance(second, Unavailable)
    assert first.detail == second.detail
    assert "hunter2" not in first.message
    assert first.detail == (
        "git ls-remote h: fatal: unable to access 'https://deploy:***@h/': "
        "Failed to connect to h port 443: Couldn't connect to server"
    )
    assert steady("Operation timed out after 30001 milliseconds with 0 out of 0 bytes received") == (
        "Operation timed out"
    )
    assert (
        steady("error: 15077 bytes of body are still expected")
        == "error: some bytes of body are still expected"
    )


def test_without_shared_sources_the_message_says_when_this_failure_happened(tmp_path, tls):
    """`gitward verify` and friends keep no history: "since" is the moment of this failure."""
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with closed_port() as port:
        error = head_error(f"https://127.0.0.1:{port}/web.git", https(tls), options(tmp_path))
    after = dt.datetime.now(dt.UTC)
    assert isinstance(error, Unavailable)
    assert before <= dt.datetime.strptime(error.since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) <= after


class Wall:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 20, 10, 3, 456000, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def shared_head(shared: SharedSources, server: OutageHttpsGitServer, *, fresh: bool = True) -> str:
    allowed = source(server.url("team/web.git"))
    return shared.head(
        SourceKey.of("tenant", allowed, credentials(server)),
        allowed,
        credentials=credentials(server),
        budgets=None,
        fresher_than=time.monotonic() if fresh else float("-inf"),
    )


def shared_error(shared: SharedSources, server: OutageHttpsGitServer, *, fresh: bool = True) -> GitwardError:
    with pytest.raises(GitwardError) as raised:
        shared_head(shared, server, fresh=fresh)
    return raised.value


def test_an_outage_is_dated_from_its_first_failure_until_the_server_answers(tmp_path, repo, server):
    """Every failed check of an outage says the same since-time (the first failure); an answer ends it."""
    wall = Wall()
    shared = SharedSources(options(tmp_path), wall=wall)
    key = SourceKey.of("tenant", source(server.url("team/web.git")), credentials(server))
    assert shared_head(shared, server) == repo.head()
    assert shared.unavailable_since(key) == ""

    server.stop()
    first = shared_error(shared, server)
    wall.advance(95)
    second = shared_error(shared, server)  # a new check, a minute and a half later
    cached = shared_error(shared, server, fresh=False)  # within the window: no new check
    assert shared.counts(key) == (3, 0)
    assert_unavailable(first, f"127.0.0.1 port {server.port}")
    assert first.message.startswith(
        "the git server has not answered since 2026-11-25T20:10:03Z: git ls-remote "
    )
    assert first.message == second.message == cached.message
    assert shared.unavailable_since(key) == "2026-11-25T20:10:03Z"

    server.start()
    wall.advance(60)
    assert shared_head(shared, server) == repo.head()
    assert shared.unavailable_since(key) == ""

    server.stop()
    wall.advance(60)
    again = shared_error(shared, server)
    assert isinstance(again, Unavailable)
    assert again.since == kube_time(wall.now) == "2026-11-25T20:13:38Z"


def test_a_server_that_answers_with_a_refusal_ends_the_outage(tmp_path, repo, server):
    """503 then 403 then 503: the 403 was an answer, so the second outage has its own since-time."""
    wall = Wall()
    shared = SharedSources(options(tmp_path), wall=wall)
    server.fail(503)
    first = shared_error(shared, server)
    assert_unavailable(first, "returned error: 503")
    server.fail(403)
    wall.advance(30)
    refused = shared_error(shared, server)
    assert refused.reason is Reason.FETCH_FAILED
    server.fail(503)
    wall.advance(30)
    later = shared_error(shared, server)
    assert isinstance(first, Unavailable)
    assert isinstance(later, Unavailable)
    assert (first.since, later.since) == ("2026-11-25T20:10:03Z", "2026-11-25T20:11:03Z")
    assert server.count("503") >= 2
    assert server.count("403") >= 1


def test_a_fetch_that_gets_no_answer_belongs_to_the_same_outage(tmp_path, repo, server):
    """The head was seen, then the server stopped before the fetch: the next checks keep the fetch's since-time."""
    wall = Wall()
    shared = SharedSources(options(tmp_path), wall=wall)
    allowed = source(server.url("team/web.git"))
    key = SourceKey.of("tenant", allowed, credentials(server))
    head = shared_head(shared, server)
    server.stop()
    with pytest.raises(GitwardError) as fetching:
        shared.fetch(key, allowed, credentials=credentials(server), budgets=None, head=head)
    wall.advance(40)
    checked = shared_error(shared, server)
    assert isinstance(fetching.value, Unavailable)
    assert isinstance(checked, Unavailable)
    assert fetching.value.since == checked.since == "2026-11-25T20:10:03Z"
    assert fetching.value.detail.startswith("git fetch ")

    server.start()
    assert shared_head(shared, server) == head
    checkout = shared.fetch(key, allowed, credentials=credentials(server), budgets=None, head=head)
    assert checkout.commit == head
    assert shared.unavailable_since(key) == ""
