"""gitward's kubeconfig and in-cluster loader reads what kubectl reads, and refuses what it cannot honour."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kopf
import pytest
import yaml

from gitward.kube import clients, config
from gitward.kube.config import ConfigError, Credential, ExecPlugin, ExecSpec, TokenFile

CA = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_kubeconfig(
    path: Path, *, cluster: dict | None = None, user: dict | None = None, current: str | None = "dev", **extra
) -> Path:
    body = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://kube.example:6443", **(cluster or {})}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
        **({"current-context": current} if current else {}),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    return path


def test_data_fields_are_decoded_to_pem_and_file_fields_resolve_against_the_kubeconfig(tmp_path):
    path = write_kubeconfig(
        tmp_path / "conf" / "config",
        cluster={"certificate-authority-data": b64(CA), "tls-server-name": "kube.internal"},
        user={"client-certificate": "pki/me.crt", "client-key": "/abs/me.key", "token": "t0ken"},
    )
    configuration = clients.load_configuration(str(path))
    assert configuration.host == "https://kube.example:6443"
    assert configuration.ca_data == CA
    assert configuration.ca_path is None
    assert configuration.tls_server_name == "kube.internal"
    assert configuration.certificate_path == str(tmp_path / "conf" / "pki" / "me.crt")
    assert configuration.private_key_path == "/abs/me.key"
    assert configuration.credentials.current().token == "t0ken"


def test_a_relative_certificate_authority_and_client_data(tmp_path):
    path = write_kubeconfig(
        tmp_path / "config",
        cluster={"certificate-authority": "ca.crt"},
        user={"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
    )
    configuration = clients.load_configuration(str(path))
    assert configuration.ca_path == str(tmp_path / "ca.crt")
    assert (configuration.certificate_data, configuration.private_key_data) == (CERT, KEY)
    assert configuration.credentials.current().token is None
    parts = clients.connection_parts(configuration)
    assert parts["certificate_data"] == CERT
    assert parts["private_key_data"] == KEY
    assert parts["ca_path"] == str(tmp_path / "ca.crt")
    assert parts["token"] is None
    kopf.ConnectionInfo(**parts)  # type: ignore[arg-type]  # kopf takes exactly these


@pytest.mark.parametrize(
    "ca", [{"certificate-authority": "ca.crt"}, {"certificate-authority-data": b64(CA)}], ids=["file", "data"]
)
def test_insecure_with_a_ca_is_refused_as_kubectl_refuses_it(tmp_path, ca):
    path = write_kubeconfig(tmp_path / "config", cluster={"insecure-skip-tls-verify": True, **ca})
    with pytest.raises(ConfigError) as refused:
        clients.load_configuration(str(path))
    assert "specifying a root certificates file with the insecure flag is not allowed" in str(refused.value)


def test_insecure_without_a_ca(tmp_path):
    path = write_kubeconfig(tmp_path / "config", cluster={"insecure-skip-tls-verify": True})
    configuration = clients.load_configuration(str(path))
    assert configuration.insecure
    assert (configuration.ca_path, configuration.ca_data) == (None, None)
    assert clients.connection_parts(configuration)["insecure"] is True


def test_relative_paths_resolve_against_a_symlinked_kubeconfigs_own_directory(tmp_path):
    """kubectl takes the directory of the path as given (filepath.Abs), not of the symlink's target."""
    real = write_kubeconfig(
        tmp_path / "store" / "config",
        cluster={"certificate-authority": "ca.crt"},
        user={"client-certificate": "pki/me.crt", "client-key": "pki/me.key", "tokenFile": "token"},
    )
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "token").write_text("next-to-the-link")
    link = tmp_path / "home" / "config"
    link.symlink_to(real)
    configuration = clients.load_configuration(str(link))
    assert configuration.ca_path == str(tmp_path / "home" / "ca.crt")
    assert configuration.certificate_path == str(tmp_path / "home" / "pki" / "me.crt")
    assert configuration.private_key_path == str(tmp_path / "home" / "pki" / "me.key")
    assert configuration.credentials.current().token == "next-to-the-link"


def test_a_relative_kubeconfig_path_is_made_absolute(tmp_path, monkeypatch):
    write_kubeconfig(tmp_path / "conf" / "config", cluster={"certificate-authority": "ca.crt"})
    monkeypatch.chdir(tmp_path)
    configuration = clients.load_configuration("conf/config")
    assert configuration.ca_path == str(tmp_path / "conf" / "ca.crt")


def test_a_token_file_is_read_again_when_it_changes_and_every_minute(tmp_path):
    (tmp_path / "tokens").mkdir()
    token = tmp_path / "tokens" / "token"
    token.write_text("first\n")
    path = write_kubeconfig(tmp_path / "config", user={"tokenFile": "tokens/token", "token": "ignored"})
    configuration = clients.load_configuration(str(path))
    assert configuration.credentials.current().token == "first"
    replacement = tmp_path / "tokens" / "new"
    replacement.write_text("rotated")
    replacement.replace(token)  # as a projected volume swaps it: a new file in its place
    assert configuration.credentials.current().token == "rotated"
    parts = clients.connection_parts(configuration)
    assert (parts["scheme"], parts["token"]) == ("Bearer", "rotated")


def test_a_token_file_is_read_again_after_a_minute_even_unchanged_looking(tmp_path):
    token = tmp_path / "token"
    token.write_text("aaaa")
    now = [0.0]
    source = TokenFile(token, clock=lambda: now[0])
    assert source.current().token == "aaaa"
    before = token.stat()
    token.write_text("bbbb")
    os.utime(token, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime: looks unchanged
    assert source.current().token == "aaaa"
    now[0] = config.TOKEN_REREAD_SECONDS + 1
    assert source.current().token == "bbbb"
    token.unlink()
    assert source.current().token == "bbbb"  # the last good token is kept while the file is gone


def test_in_cluster_reads_the_service_account(tmp_path):
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "ca.crt").write_text(CA)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    configuration = config.in_cluster(env, tmp_path)
    assert configuration is not None
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.ca_path == str(tmp_path / "ca.crt")
    assert configuration.credentials.current().token == "pod-token"
    six = config.in_cluster(
        {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path
    )
    assert six is not None
    assert six.host == "https://[fd00::1]:443"
    assert config.in_cluster({}, tmp_path) is None
    assert config.in_cluster(env, tmp_path / "absent") is None


def test_kubeconfig_variable_files_are_merged_as_kubectl_does(tmp_path, monkeypatch):
    first = tmp_path / "a.yaml"
    first.write_text(
        yaml.safe_dump({"current-context": "other", "users": [{"name": "u", "user": {"token": "a"}}]})
    )
    second = write_kubeconfig(
        tmp_path / "b" / "config",
        user={"token": "b"},
        current="dev",
        contexts=[
            {"name": "dev", "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "c", "user": "u"}},
        ],
    )
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(tmp_path / "missing"), str(second)]))
    monkeypatch.setattr(config, "in_cluster", lambda: None)
    configuration = clients.load_configuration(None)
    assert configuration.credentials.current().token == "a"  # the first file to name the user wins
    assert configuration.host == "https://kube.example:6443"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"current": None}, "has no current-context"),
        ({"current": "prod"}, "context 'prod' is not in the kubeconfig"),
        ({"contexts": [{"name": "dev", "context": {"cluster": "gone", "user": "u"}}]}, "cluster 'gone'"),
        ({"contexts": [{"name": "dev", "context": {"cluster": "c", "user": "nobody"}}]}, "user 'nobody'"),
        ({"user": {"auth-provider": {"name": "gcp"}}}, "auth-provider is not supported"),
        ({"user": {"as": "someone"}}, "user's as is not supported"),
        ({"cluster": {"proxy-url": "http://proxy:3128"}}, "proxy-url is not supported"),
        ({"cluster": {"server": ""}}, "has no server"),
        ({"user": {"client-certificate-data": b64(CERT)}}, "without a key"),
        ({"user": {"client-key-data": "%%% not base64"}}, "client-key-data is not base64"),
        (
            {"user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}}},
            "v1alpha1",
        ),
        ({"user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1"}}}, "exec has no command"),
        (
            {
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": "x",
                        "interactiveMode": "Always",
                    }
                }
            },
            "interactiveMode Always",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(tmp_path, change, message):
    path = write_kubeconfig(tmp_path / "config", **change)
    with pytest.raises(ConfigError) as refused:
        clients.load_configuration(str(path))
    assert message in str(refused.value)


def test_a_missing_kubeconfig_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the kubeconfig"):
        clients.load_configuration(str(tmp_path / "nothing"))


PLUGIN = """\
#!{python}
import json, os, sys
from pathlib import Path
calls = Path(__file__).with_name("calls")
calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
Path(__file__).with_name("cwd").write_text(os.getcwd())
Path(__file__).with_name("info").write_text(os.environ["KUBERNETES_EXEC_INFO"])
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
switch = Path(__file__).with_name("mode")
mode = switch.read_text().strip() if switch.exists() else os.environ.get("MODE", "token")
if mode == "fail":
    print("no credentials for you", file=sys.stderr)
    sys.exit(3)
status = {{"expirationTimestamp": os.environ["EXPIRES"]}} if os.environ.get("EXPIRES") else {{}}
if mode == "token":
    status["token"] = "tok-" + "-".join(sys.argv[1:]) + "-" + str(len(calls.read_text()))
else:
    status["clientCertificateData"] = os.environ["CERT"]
    status["clientKeyData"] = os.environ["KEY"]
print(json.dumps({{"apiVersion": os.environ.get("ANSWER_VERSION", info["apiVersion"]),
                  "kind": "ExecCredential", "status": status, "spec": info["spec"]}}))
"""


def plugin_kubeconfig(
    tmp_path: Path,
    *,
    env: dict[str, str],
    version: str = "client.authentication.k8s.io/v1",
    cluster: dict | None = None,
) -> Path:
    script = tmp_path / "bin" / "plugin.py"
    script.parent.mkdir(parents=True)
    script.write_text(PLUGIN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return write_kubeconfig(
        tmp_path / "config",
        cluster=cluster if cluster is not None else {"certificate-authority-data": b64(CA)},
        user={
            "exec": {
                "apiVersion": version,
                "command": "./bin/plugin.py",  # relative to the kubeconfig, as kubectl resolves it
                "args": ["a", "b"],
                "env": [{"name": key, "value": value} for key, value in env.items()],
                "interactiveMode": "Never",
                "provideClusterInfo": True,
            }
        },
    )


def calls(tmp_path: Path) -> int:
    return len((tmp_path / "bin" / "calls").read_text())


@pytest.mark.parametrize("version", sorted(config.EXEC_API_VERSIONS))
def test_an_exec_plugin_token_is_cached_until_it_expires(tmp_path, version):
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    path = plugin_kubeconfig(tmp_path, env={"EXPIRES": "2030-01-01T00:00:00Z"}, version=version)
    configuration = clients.load_configuration(str(path))
    credentials = configuration.credentials
    assert isinstance(credentials, ExecPlugin)
    assert credentials.current().token == "tok-a-b-1"
    assert credentials.current().token == "tok-a-b-1"
    assert calls(tmp_path) == 1  # run once at load, then cached
    assert clients.connection_parts(configuration)["token"] == "tok-a-b-1"
    credentials.clock = lambda: expires - timedelta(seconds=5)  # within the margin: fetched again
    assert credentials.current().token == "tok-a-b-2"
    credentials.clock = lambda: expires - timedelta(hours=1)
    assert credentials.current().token == "tok-a-b-2"
    assert credentials.invalidate()  # a 401: asked again
    assert credentials.current().token == "tok-a-b-3"
    assert calls(tmp_path) == 3


def test_an_exec_plugin_sees_its_env_args_and_the_cluster(tmp_path):
    path = plugin_kubeconfig(tmp_path, env={"MODE": "token"})
    spec = clients.load_configuration(str(path)).credentials.spec  # type: ignore[attr-defined]
    assert spec.args == ("a", "b")
    assert spec.cluster == {
        "server": "https://kube.example:6443",
        "certificate-authority-data": b64(CA),
        "insecure-skip-tls-verify": False,
    }
    # Without an expiry the credential is kept until the API server refuses it.
    assert calls(tmp_path) == 1


def test_provide_cluster_info_passes_a_ca_file_as_data_as_client_go_does(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text(CA)
    path = plugin_kubeconfig(
        tmp_path, env={}, cluster={"certificate-authority": "pki/ca.crt", "tls-server-name": "kube.internal"}
    )
    configuration = clients.load_configuration(str(path))
    assert configuration.ca_path == str(tmp_path / "pki" / "ca.crt")
    sent = json.loads((tmp_path / "bin" / "info").read_text())["spec"]["cluster"]
    assert sent == {
        "server": "https://kube.example:6443",
        "tls-server-name": "kube.internal",
        "certificate-authority-data": b64(CA),
        "insecure-skip-tls-verify": False,
    }


def test_provide_cluster_info_with_a_ca_file_that_cannot_be_read_is_refused(tmp_path):
    path = plugin_kubeconfig(tmp_path, env={}, cluster={"certificate-authority": "absent.crt"})
    with pytest.raises(ConfigError, match=r"cannot read the certificate-authority .*absent\.crt"):
        clients.load_configuration(str(path))


def test_an_exec_plugin_runs_in_the_process_working_directory(tmp_path, monkeypatch):
    """client-go runs the plugin where the process runs; only a relative command is the kubeconfig's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = plugin_kubeconfig(tmp_path, env={})
    monkeypatch.chdir(elsewhere)
    assert clients.load_configuration(str(path)).credentials.current().token == "tok-a-b-1"
    assert (tmp_path / "bin" / "cwd").read_text() == str(elsewhere)


def test_an_exec_plugin_may_give_a_client_certificate(tmp_path):
    path = plugin_kubeconfig(tmp_path, env={"MODE": "cert", "CERT": CERT, "KEY": KEY})
    configuration = clients.load_configuration(str(path))
    credential = configuration.credentials.current()
    assert (credential.token, credential.certificate, credential.private_key) == (None, CERT, KEY)
    parts = clients.connection_parts(configuration)
    assert (parts["certificate_data"], parts["private_key_data"]) == (CERT, KEY)
    assert "KEY" not in repr(credential)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODE": "fail"}, "failed (exited, exit code 3)"),
        ({"ANSWER_VERSION": "client.authentication.k8s.io/v1beta1"}, "answered apiVersion"),
        ({"MODE": "cert", "CERT": CERT, "KEY": ""}, "only one without the other"),
    ],
)
def test_a_failing_exec_plugin_is_a_config_error_that_says_why(tmp_path, env, message):
    path = plugin_kubeconfig(tmp_path, env=env)
    with pytest.raises(ConfigError) as refused:
        clients.load_configuration(str(path))
    assert message in str(refused.value)


def test_an_exec_plugin_that_is_not_installed_says_how_to_install_it(tmp_path):
    path = write_kubeconfig(
        tmp_path / "config",
        user={
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "gitward-no-such-plugin",
                "installHint": "install it from example.com",
            }
        },
    )
    with pytest.raises(ConfigError) as refused:
        clients.load_configuration(str(path))
    assert "gitward-no-such-plugin" in str(refused.value)
    assert "install it from example.com" in str(refused.value)


def test_exec_info_says_it_is_not_interactive(tmp_path):
    script = tmp_path / "echo-info.py"
    script.write_text(
        textwrap.dedent(f"""\
            #!{sys.executable}
            import json, os
            info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
            assert info["spec"]["interactive"] is False, info
            print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                              "status": {{"token": "ok"}}}}))
        """)
    )
    script.chmod(0o700)
    path = write_kubeconfig(
        tmp_path / "config",
        user={"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script)}},
    )
    assert clients.load_configuration(str(path)).credentials.current().token == "ok"  # the plugin checked


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_exec_plugin_backs_off_and_fails_fast_meanwhile(tmp_path):
    """A failure is remembered: 1 s, then doubling to 30 s, each request failing at once with the same error."""
    path = plugin_kubeconfig(tmp_path, env={"MODE": "fail"})
    with pytest.raises(ConfigError):
        clients.load_configuration(str(path))
    plugin = config.from_kubeconfig([path]).credentials
    assert isinstance(plugin, ExecPlugin)
    clock = Clock()
    plugin.monotonic = clock
    (tmp_path / "bin" / "calls").unlink()

    def fails() -> str:
        with pytest.raises(ConfigError) as refused:
            plugin.current()
        return str(refused.value)

    first = fails()
    assert "failed (exited, exit code 3)" in first
    assert "no credentials for you" not in first  # its stderr may hold what it was handed
    assert calls(tmp_path) == 1
    for _ in range(3):
        assert fails() == first  # within the backoff: the same error, the plugin not run
    assert calls(tmp_path) == 1
    expected_runs = 1
    for backoff in (1, 2, 4, 8, 16, 30, 30):
        clock.now += backoff - 0.01
        assert fails() == first
        assert calls(tmp_path) == expected_runs  # not yet
        clock.now += 0.01
        assert fails() == first
        expected_runs += 1
        assert calls(tmp_path) == expected_runs  # run again once the backoff has passed
    (tmp_path / "bin" / "mode").write_text("token")  # the plugin works again
    clock.now += 29
    assert fails() == first  # still backing off
    clock.now += 1
    assert plugin.current().token == f"tok-a-b-{expected_runs + 1}"
    (tmp_path / "bin" / "mode").write_text("fail")
    assert plugin.current().token == f"tok-a-b-{expected_runs + 1}"  # cached: the plugin not asked
    assert plugin.invalidate()
    fails()
    clock.now += 1  # a success reset the backoff: one second again
    (tmp_path / "bin" / "mode").write_text("token")
    assert plugin.current().token == f"tok-a-b-{expected_runs + 3}"


def test_a_hung_exec_plugin_does_not_queue_other_requests(monkeypatch):
    """While one thread runs the plugin, others wait at most EXEC_LOCK_WAIT, or take a still-valid credential."""
    monkeypatch.setattr(config, "EXEC_LOCK_WAIT", 0.1)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    plugin = ExecPlugin(
        ExecSpec(api_version="client.authentication.k8s.io/v1", command="/x/hung"), clock=lambda: now
    )
    started, release = threading.Event(), threading.Event()
    answers = iter(
        [(Credential(token="first"), now + timedelta(seconds=5)), (Credential(token="second"), None)]
    )

    def run() -> tuple[Credential, datetime | None]:
        started.set()
        assert release.wait(timeout=30)
        return next(answers)

    monkeypatch.setattr(plugin, "_run", run)
    results: list[str] = []
    runner = threading.Thread(target=lambda: results.append(plugin.current().token or ""))
    runner.start()
    assert started.wait(timeout=10)
    with pytest.raises(ConfigError) as refused:
        plugin.current()  # nothing cached: fails after the short wait, as "no credentials"
    assert str(refused.value).startswith("no credentials: the exec credential plugin 'hung'")
    release.set()
    runner.join(timeout=10)
    assert results == ["first"]
    # "first" expires within the margin: the next caller runs the plugin; meanwhile others take "first".
    started.clear()
    release.clear()
    runner = threading.Thread(target=lambda: results.append(plugin.current().token or ""))
    runner.start()
    assert started.wait(timeout=10)
    assert plugin.current().token == "first"  # still valid for 5 s: not worth failing a request over
    release.set()
    runner.join(timeout=10)
    assert results == ["first", "second"]
    assert plugin.current().token == "second"


def test_a_failed_refresh_keeps_a_credential_until_it_expires(monkeypatch):
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    plugin = ExecPlugin(
        ExecSpec(api_version="client.authentication.k8s.io/v1", command="p"),
        clock=lambda: now[0],
        monotonic=Clock(),
    )
    answers: list[tuple[Credential, datetime | None] | None] = [
        (Credential(token="t"), now[0] + timedelta(seconds=60))
    ]

    def run() -> tuple[Credential, datetime | None]:
        answer = answers.pop(0) if answers else None
        if answer is None:
            raise ConfigError("the exec credential plugin 'p' failed")
        return answer

    monkeypatch.setattr(plugin, "_run", run)
    assert plugin.current().token == "t"
    now[0] += timedelta(seconds=55)  # within the margin: refreshed, which fails
    assert plugin.current().token == "t"  # still valid for 5 s: kept
    assert plugin.current().token == "t"  # and during the backoff too
    now[0] += timedelta(seconds=5)
    with pytest.raises(ConfigError, match="'p' failed"):
        plugin.current()  # expired: no credential


def test_no_secret_appears_in_a_repr(tmp_path):
    secrets = ["s3cret-token", "s3cret-password", "s3cret-env", "s3cret-arg", "s3cret-ext"]
    path = write_kubeconfig(
        tmp_path / "config",
        cluster={"certificate-authority-data": b64(CA)},
        user={
            "token": "s3cret-token",
            "username": "me",
            "password": "s3cret-password",
            "client-certificate-data": b64(CERT),
            "client-key-data": b64(KEY),
        },
    )
    static = clients.load_configuration(str(path))
    assert static.private_key_data == KEY  # loaded, but not shown
    script = tmp_path / "plugin.py"
    script.write_text(
        f"#!{sys.executable}\nimport json, os\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',\n"
        "                  'status': {'token': 'exec-token-s3cret', 'clientCertificateData': 'C',\n"
        "                             'clientKeyData': 'exec-key-s3cret'}}))\n"
    )
    script.chmod(0o700)
    path = write_kubeconfig(
        tmp_path / "exec-config",
        cluster={
            "certificate-authority-data": b64(CA),
            "extensions": [{"name": "client.authentication.k8s.io/exec", "extension": {"k": "s3cret-ext"}}],
        },
        user={
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": str(script),
                "args": ["--key=s3cret-arg"],
                "env": [{"name": "PASSWORD", "value": "s3cret-env"}],
                "provideClusterInfo": True,
            }
        },
    )
    executing = clients.load_configuration(str(path))
    assert isinstance(executing.credentials, ExecPlugin)
    credential = executing.credentials.current()
    assert credential.token == "exec-token-s3cret"
    shown = [
        repr(static),
        repr(static.credentials),
        repr(static.credentials.current()),
        repr(executing),
        repr(executing.credentials),
        repr(executing.credentials.spec),
        repr(credential),
        repr(config.TokenFile(tmp_path / "token")),
    ]
    for text in shown:
        for secret in [*secrets, "exec-token-s3cret", "exec-key-s3cret", KEY, CERT, "S0VZ"]:
            assert secret not in text, (secret, text)
    assert "me" in repr(static)  # the username, not a secret, still helps
