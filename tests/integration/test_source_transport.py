"""Fetching over real servers on loopback: git http-backend behind HTTPS + basic auth, and sshd.

Credentials, host-key pinning and failures (server down, slower than the
timeout, wrong password, wrong key) against the real thing; every server is
stopped by its context manager, also when a test fails.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from gitward.api.conditions import Reason
from gitward.api.resources import Namespace, SourceRule
from gitward.errors import GitwardError
from gitward.source import git, urls
from gitward.source.allow import AllowedSource
from support.gitservers import HttpsGitServer, SshGitServer, free_port
from support.signing import SshIdentity, WorkRepo


def source(url: str, branch: str = "main") -> AllowedSource:
    return AllowedSource(
        url=urls.parse(url),
        branch=branch,
        rule=SourceRule(url, (branch,)),
        target_namespace=Namespace("team-a"),
    )


def options(tmp_path: Path, timeout: float = 20.0) -> git.FetchOptions:
    return git.FetchOptions(cache_root=tmp_path / "cache", timeout=timeout)


def fetch_error(
    url: str, credentials: git.Credentials | None, opts: git.FetchOptions, uid: str = "app"
) -> GitwardError:
    with pytest.raises(GitwardError) as error:
        git.fetch(source(url), app_uid=uid, credentials=credentials, options=opts)
    return error.value


@pytest.fixture
def work(tmp_path) -> WorkRepo:
    repo = WorkRepo.create(tmp_path / "work")
    repo.bare_remote("origin", tmp_path / "srv" / "web.git")
    repo.commit({"deploy/app.yaml": "kind: ConfigMap\n"}, message="first")
    repo.push()
    return repo


@pytest.fixture
def https(tmp_path, work) -> HttpsGitServer:
    with HttpsGitServer(tmp_path / "srv", tmp_path / "tls") as server:
        yield server


def https_credentials(server: HttpsGitServer, password: str | None = None) -> git.Credentials:
    return git.Credentials(
        username=server.username, password=password or server.password, ca_cert=server.ca_cert.read_text()
    )


def test_https_fetch_then_a_poll_with_nothing_new_is_one_round_trip(tmp_path, work, https):
    """First fetch downloads; a poll with no new commit asks only for refs; a new commit is fetched."""
    opts = options(tmp_path)
    first = git.fetch(
        source(https.url("web.git")), app_uid="app", credentials=https_credentials(https), options=opts
    )
    assert first.commit == work.head()
    assert first.fetched
    assert https.commands().count("fetch") == 1
    before = len(https.requests)

    poll = git.fetch(
        source(https.url("web.git")), app_uid="app", credentials=https_credentials(https), options=opts
    )
    assert poll.commit == first.commit
    assert not poll.fetched
    assert "fetch" not in https.commands()[before:]
    assert poll.repo == first.repo

    work.commit(message="second")
    work.push()
    third = git.fetch(
        source(https.url("web.git")), app_uid="app", credentials=https_credentials(https), options=opts
    )
    assert (third.commit, third.fetched) == (work.head(), True)


def test_the_cache_directory_is_private_and_unguessable(tmp_path, work, https):
    """The per-app repository lives in a 0700 root under an HMAC name, distinct per app."""
    opts = options(tmp_path)
    one = git.fetch(
        source(https.url("web.git")), app_uid="app-1", credentials=https_credentials(https), options=opts
    )
    two = git.fetch(
        source(https.url("web.git")), app_uid="app-2", credentials=https_credentials(https), options=opts
    )
    assert one.repo != two.repo
    assert (opts.cache_root.stat().st_mode & 0o777) == 0o700
    assert (one.repo.stat().st_mode & 0o777) == 0o700
    assert "app-1" not in one.repo.name
    assert len(one.repo.name) == 40


def test_a_wrong_password_fails_without_revealing_it(tmp_path, work, https):
    """The server's 401 becomes FetchFailed; neither the password nor its encoding is in the message."""
    wrong = "Wr0ng-but-Secret-Passw0rd"
    error = fetch_error(https.url("web.git"), https_credentials(https, wrong), options(tmp_path))
    assert error.reason is Reason.FETCH_FAILED
    assert "authentication failed" in error.message
    assert wrong not in str(error)
    assert base64.b64encode(f"{https.username}:{wrong}".encode()).decode() not in str(error)
    assert "401" in https.commands()


def test_missing_credentials_fail(tmp_path, work, https):
    """No Secret at all against a server that wants one: FetchFailed, no prompt, no hang."""
    no_auth = git.Credentials(ca_cert=https.ca_cert.read_text())
    assert fetch_error(https.url("web.git"), no_auth, options(tmp_path)).reason is Reason.FETCH_FAILED


def test_an_untrusted_tls_certificate_is_refused(tmp_path, work, https):
    """Without the server's CA in the Secret, TLS verification fails: FetchFailed."""
    creds = git.Credentials(username=https.username, password=https.password)
    error = fetch_error(https.url("web.git"), creds, options(tmp_path))
    assert error.reason is Reason.FETCH_FAILED
    assert "certificate" in error.message.lower()


def test_a_server_that_is_down_fails_fast(tmp_path, work):
    """Nothing listening on the port: SourceUnavailable within a second or two, not at the timeout."""
    started = time.monotonic()
    error = fetch_error(f"https://127.0.0.1:{free_port()}/web.git", None, options(tmp_path, timeout=30))
    assert error.reason is Reason.SOURCE_UNAVAILABLE
    assert time.monotonic() - started < 10


def test_a_server_slower_than_the_timeout_is_abandoned(tmp_path, work, https):
    """A server that stalls past the timeout is cut off at the timeout: SourceUnavailable, retryable."""
    https.delay = 8.0
    started = time.monotonic()
    error = fetch_error(https.url("web.git"), https_credentials(https), options(tmp_path, timeout=1.5))
    elapsed = time.monotonic() - started
    assert error.reason is Reason.SOURCE_UNAVAILABLE
    assert "timed out after 1.5s" in error.message
    assert elapsed < 5


def test_a_missing_branch_is_fetch_failed(tmp_path, work, https):
    """An allowed branch that does not exist on the server is FetchFailed, naming it."""
    with pytest.raises(GitwardError) as error:
        git.fetch(
            source(https.url("web.git"), "release/9"),
            app_uid="app",
            credentials=https_credentials(https),
            options=options(tmp_path),
        )
    assert error.value.reason is Reason.FETCH_FAILED
    assert "release/9" in error.value.message


def test_global_config_and_environment_cannot_redirect_git(tmp_path, work, https, monkeypatch):
    """A poisoned ~/.gitconfig, GIT_* variables and GIT_SSH_COMMAND in our environment are not inherited."""
    evil_home = tmp_path / "evil-home"
    evil_home.mkdir()
    marker = tmp_path / "pwned"
    (evil_home / ".gitconfig").write_text(
        f'[url "https://127.0.0.1:{free_port()}/"]\n\tinsteadOf = {https.url("")}\n'
        f"[core]\n\thooksPath = {evil_home}\n\tsshCommand = touch {marker}\n"
    )
    monkeypatch.setenv("HOME", str(evil_home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(evil_home / ".gitconfig"))
    monkeypatch.setenv("GIT_SSH_COMMAND", f"touch {marker}")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'http.sslVerify'='false'")
    monkeypatch.setenv("GIT_ALTERNATE_OBJECT_DIRECTORIES", str(evil_home))
    checkout = git.fetch(
        source(https.url("web.git")),
        app_uid="app",
        credentials=https_credentials(https),
        options=options(tmp_path),
    )
    assert checkout.commit == work.head()
    assert not marker.exists()


@pytest.fixture
def sshd(tmp_path, work):
    client = SshIdentity.create(tmp_path / "client", "id_client")
    with SshGitServer(tmp_path / "sshd", client.public_line) as server:
        yield server, client


def test_ssh_fetch_with_a_pinned_host_key(tmp_path, work, sshd):
    """An SSH key plus the server's pinned host key fetches the branch head."""
    server, client = sshd
    creds = git.Credentials(
        ssh_identity=client.private_key.read_text(), known_hosts=server.known_hosts_line()
    )
    checkout = git.fetch(
        source(server.url(work.remotes["origin"])),
        app_uid="app",
        credentials=creds,
        options=options(tmp_path),
    )
    assert checkout.commit == work.head()


def test_a_changed_host_key_is_refused(tmp_path, work, sshd):
    """known_hosts pins another key for this host: FetchFailed, with 'host key' and what was offered."""
    server, client = sshd
    impostor = SshIdentity.create(tmp_path / "impostor", "id_impostor")
    pinned = f"[127.0.0.1]:{server.port} " + " ".join(impostor.public_line.split()[:2])
    creds = git.Credentials(ssh_identity=client.private_key.read_text(), known_hosts=pinned)
    error = fetch_error(server.url(work.remotes["origin"]), creds, options(tmp_path))
    assert error.reason is Reason.FETCH_FAILED
    assert "host key" in error.message
    assert "SHA256:" in error.message


def test_an_unknown_host_is_refused(tmp_path, work, sshd):
    """known_hosts that does not mention this host: FetchFailed with 'host key' (no trust on first use)."""
    server, client = sshd
    other_host = "[127.0.0.1]:1 " + " ".join(server.host_public_key.split()[:2])
    creds = git.Credentials(ssh_identity=client.private_key.read_text(), known_hosts=other_host)
    error = fetch_error(server.url(work.remotes["origin"]), creds, options(tmp_path))
    assert error.reason is Reason.FETCH_FAILED
    assert "host key" in error.message


def test_ssh_without_known_hosts_is_refused_before_connecting(tmp_path, work, sshd):
    """An SSH source whose Secret pins no host key is refused without contacting the server."""
    server, client = sshd
    error = fetch_error(
        server.url(work.remotes["origin"]),
        git.Credentials(ssh_identity=client.private_key.read_text()),
        options(tmp_path),
    )
    assert error.reason is Reason.FETCH_FAILED
    assert "host key" in error.message


def test_a_wrong_client_key_is_refused_and_not_shown(tmp_path, work, sshd):
    """A key the server does not accept: FetchFailed, and no line of the private key in the message."""
    server, _ = sshd
    stranger = SshIdentity.create(tmp_path / "stranger", "id_stranger")
    key_text = stranger.private_key.read_text()
    creds = git.Credentials(ssh_identity=key_text, known_hosts=server.known_hosts_line())
    error = fetch_error(server.url(work.remotes["origin"]), creds, options(tmp_path))
    assert error.reason is Reason.FETCH_FAILED
    assert "authentication failed" in error.message
    for line in key_text.splitlines()[1:-1]:
        assert line not in str(error)
