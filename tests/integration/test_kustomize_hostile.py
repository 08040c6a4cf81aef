"""Hostile kustomizations against a real kustomize: refused before it runs, and defanged if one got through."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled, Waiting
from gitward.render import kustomize
from gitward.render.limits import Limits
from gitward.render.load import load
from gitward.render.tree import Tree
from gitward.source import git
from support.signing import WorkRepo
from support.toolpaths import kubectl_binary

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  key: value\n"
KUSTOMIZE = (kubectl_binary(), "kustomize")


class CountingServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server that counts every connection, whatever protocol the client speaks."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.lock = threading.Lock()

    def verify_request(self, request, client_address) -> bool:  # noqa: ARG002 - the signature of socketserver
        with self.lock:
            self.connections += 1
        return True

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = CONFIGMAP.format(name="fetched").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def loopback_server() -> Iterator[CountingServer]:
    server = CountingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with loopback_server() as running:
        yield running


@pytest.fixture
def work(tmp_path) -> WorkRepo:
    return WorkRepo.create(tmp_path / "work")


def render(work: WorkRepo, **limits: float):
    repo = git.Repository(work.path / ".git", options=git.FetchOptions(cache_root=work.path.parent / "cache"))
    return load(repo, work.head(), "deploy", limits=Limits(**limits), kustomize_command=KUSTOMIZE)


def refused(work: WorkRepo, **limits: float) -> Stalled:
    with pytest.raises(Stalled) as error:
        render(work, **limits)
    return error.value


def build_only(work: WorkRepo, command=KUSTOMIZE, **limits: float) -> str:
    """Run kustomize.build on the head commit without kustomize.check: the environment is all that stands."""
    repo = git.Repository(work.path / ".git", options=git.FetchOptions(cache_root=work.path.parent / "cache"))
    limit = Limits(**limits)
    tree = Tree(repo.tree(work.head()), limits=limit)
    return kustomize.build(
        tree, "deploy", lambda entry: repo.blobs([entry.oid])[entry.oid], limits=limit, command=command
    )


@pytest.mark.parametrize(
    "reference",
    [
        "git@127.0.0.1:org/repo.git",
        "127.0.0.1:org/repo",
        "https://127.0.0.1:{port}/org/repo//deploy?ref=main",
        "https://127.0.0.1:{port}/cm.yaml",
        "http://127.0.0.1:{port}/cm.yaml",
        "ssh://git@127.0.0.1:{port}/org/repo.git",
    ],
)
def test_remote_bases_are_refused_before_kustomize_and_nothing_is_fetched(work, server, reference):
    """scp-like and URL bases pointing at a live loopback server are RemoteRefForbidden; it sees no connection."""
    reference = reference.format(port=server.port)
    work.commit(
        {
            "deploy/kustomization.yaml": "resources:\n- ../base\n",
            "base/kustomization.yaml": f"resources:\n- cm.yaml\n- {reference}\n",
            "base/cm.yaml": CONFIGMAP.format(name="a"),
        }
    )
    error = refused(work)
    assert error.reason is Reason.REMOTE_REF_FORBIDDEN
    assert "base/kustomization.yaml" in error.message
    assert server.connections == 0


def test_kustomize_on_its_own_would_fetch_from_loopback(tmp_path, server):
    """Control: a bare kustomize does fetch the loopback URL (Go skips proxies for loopback), so zero above is real."""
    (tmp_path / "kustomization.yaml").write_text(f"resources:\n- http://127.0.0.1:{server.port}/cm.yaml\n")
    result = subprocess.run(
        [*KUSTOMIZE, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "fetched" in result.stdout
    assert server.connections >= 1


def test_even_unchecked_kustomize_cannot_run_git(work, server):
    """build() alone: with an empty PATH kustomize finds no git, so an ssh base fails without a connection."""
    work.commit(
        {"deploy/kustomization.yaml": f"resources:\n- ssh://git@127.0.0.1:{server.port}/org/repo.git\n"}
    )
    with pytest.raises(Stalled) as error:
        build_only(work)
    assert error.value.reason is Reason.KUSTOMIZE_BUILD_FAILED
    assert "no 'git' program on path" in error.value.message
    assert server.connections == 0


def test_even_unchecked_kustomize_reaches_remote_hosts_only_through_a_closed_proxy(work):
    """build() alone: an http resource on another host goes to the proxy on the discard port and fails."""
    work.commit({"deploy/kustomization.yaml": "resources:\n- http://gitward-test.invalid/cm.yaml\n"})
    with pytest.raises(Stalled) as error:
        build_only(work)
    assert error.value.reason is Reason.KUSTOMIZE_BUILD_FAILED
    assert "proxyconnect" in error.value.message
    assert "127.0.0.1:9" in error.value.message


def test_a_diamond_of_bases_is_render_too_large_before_kustomize(work):
    """Bases including each other as a diamond 12 levels deep (8191 builds) are RenderTooLarge."""
    files = {"deploy/kustomization.yaml": "resources: [../l1a, ../l1b]\n"}
    for level in range(1, 13):
        below = f"[../l{level + 1}a, ../l{level + 1}b]" if level < 12 else "[cm.yaml]"
        for side in "ab":
            files[f"l{level}{side}/kustomization.yaml"] = f"resources: {below}\nnamePrefix: {side}-\n"
    files["l12a/cm.yaml"] = files["l12b/cm.yaml"] = CONFIGMAP.format(name="leaf")
    work.commit(files)
    error = refused(work)
    assert error.reason is Reason.RENDER_TOO_LARGE
    assert "8191" in error.message


def test_an_overlay_on_a_sibling_base_renders(work):
    """A legitimate overlay with ../base, a patch file, a ConfigMap generator and a component builds for real."""
    work.commit(
        {
            "base/kustomization.yaml": "resources: [cm.yaml]\n",
            "base/cm.yaml": CONFIGMAP.format(name="app"),
            "component/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
            "commonAnnotations: {team: blue}\n",
            "deploy/kustomization.yaml": "resources: [../base]\ncomponents: [../component]\nnamePrefix: prod-\n"
            "patches:\n- path: patch.yaml\nconfigMapGenerator:\n- name: settings\n  files: [app.properties]\n"
            "generatorOptions: {disableNameSuffixHash: true}\n",
            "deploy/patch.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {key: patched}\n",
            "deploy/app.properties": "a=b\n",
        }
    )
    manifests = {m.name: m.obj for m in render(work).manifests}
    assert sorted(manifests) == ["prod-app", "prod-settings"]
    assert manifests["prod-app"]["data"] == {"key": "patched"}
    assert manifests["prod-app"]["metadata"]["annotations"] == {"team": "blue"}


def test_a_base_behind_an_in_tree_directory_symlink_renders(work):
    """A base reached through a symlinked directory is vetted and built through the same link."""
    work.commit(
        {"shared/kustomization.yaml": "resources: [cm.yaml]\n", "shared/cm.yaml": CONFIGMAP.format(name="s")}
    )
    (work.path / "deploy").mkdir()
    (work.path / "deploy/base").symlink_to("../shared")
    (work.path / "deploy/kustomization.yaml").write_text("resources: [base]\n")
    work.git("add", "deploy")
    work.commit(message="overlay through a link")
    assert [m.name for m in render(work).manifests] == ["s"]


SHOW_ENVIRONMENT = (
    'test -z "$(/bin/ls -A "$PATH")" && echo EMPTY_PATH=yes; command -v git >/dev/null || echo NO_GIT=yes; '
    "/usr/bin/env"
)


def test_kustomize_runs_with_no_git_no_proxy_escape_and_a_memory_target(work, monkeypatch):
    """The environment: an empty private PATH, git protocols off, proxies on the discard port, GOMEMLIMIT."""
    monkeypatch.setenv("GIT_DIR", "/elsewhere/.git")
    monkeypatch.setenv("KUBECONFIG", "/root/.kube/config")
    work.commit({"deploy/kustomization.yaml": "resources: []\n"})
    output = build_only(work, ("sh", "-c", SHOW_ENVIRONMENT), kustomize_memory_bytes=400 * 1024 * 1024)
    env = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    assert env["EMPTY_PATH"] == env["NO_GIT"] == "yes"
    assert env["PATH"].startswith("/")
    assert env["GIT_ALLOW_PROTOCOL"] == ""
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        assert env[name] == "http://127.0.0.1:9"
    assert env["NO_PROXY"] == ""
    assert Path(env["KUSTOMIZE_PLUGIN_HOME"]).is_absolute()
    assert 0 < int(env["GOMEMLIMIT"]) <= 400 * 1024 * 1024
    assert "GIT_DIR" not in env
    assert "KUBECONFIG" not in env


def test_a_missing_kustomize_is_the_operators_problem(work):
    """No kustomize binary is Waiting/ReconcileError, not a refusal of the commit."""
    work.commit({"deploy/kustomization.yaml": "resources: []\n"})
    with pytest.raises(Waiting) as error:
        build_only(work, ("gitward-no-such-kustomize", "build"))
    assert error.value.reason is Reason.RECONCILE_ERROR


def test_too_much_output_and_too_much_time_are_render_too_large(work):
    """Output over max_rendered_bytes and a build over the timeout are RenderTooLarge."""
    work.commit({"deploy/kustomization.yaml": "resources: []\n"})
    big = refused_build(work, ("sh", "-c", "/usr/bin/head -c 5000 /dev/zero"), max_rendered_bytes=1000)
    assert big.reason is Reason.RENDER_TOO_LARGE
    assert "the limit of 1000 bytes" in big.message
    slow = refused_build(work, ("sh", "-c", "/bin/sleep 30"), kustomize_timeout=0.5)
    assert slow.reason is Reason.RENDER_TOO_LARGE
    assert "took longer than 0.5s" in slow.message


def refused_build(work: WorkRepo, command: tuple[str, ...], **limits: float) -> Stalled:
    with pytest.raises(Stalled) as error:
        build_only(work, command, **limits)
    return error.value
