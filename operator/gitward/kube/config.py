"""Where the API server is and how to log in to it: the pod's ServiceAccount, or a kubeconfig.

The ``kubernetes`` package did this for gitward, but importing it (with
pydantic) cost about 20 MiB of resident memory for a few hundred lines of
work. This module reads the same sources kubectl reads:

- In a pod (``KUBERNETES_SERVICE_HOST``/``PORT`` set and a ServiceAccount
  token mounted): the service's address, the mounted CA, and the token,
  read again whenever the file changes and at least every minute, because
  projected tokens rotate under a running process.
- Otherwise a kubeconfig (``$KUBECONFIG``, merged as kubectl merges it, or
  ``~/.kube/config``): the current context's cluster (server, CA as a path
  or data, ``insecure-skip-tls-verify``, ``tls-server-name``) and user
  (client certificate and key as paths or data, ``token``, ``tokenFile``,
  basic auth, or an ``exec`` credential plugin, as EKS and GKE use).
  Relative paths resolve against the directory of the kubeconfig's path
  as given (made absolute, symlinks not followed, as kubectl does).

A field gitward cannot honour (``auth-provider``, ``proxy-url``,
impersonation in the kubeconfig, an interactive-only plugin) is refused
with :class:`ConfigError` naming it, never silently ignored: a client that
quietly dropped part of its configuration would talk to the wrong place or
as the wrong identity. Tokens and keys never appear in an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from gitward import processes

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0  # client-go re-reads a token file every minute, changed or not
EXEC_TIMEOUT = 120.0  # seconds an exec credential plugin may take (it may fetch a token over the network)
EXEC_MAX_OUTPUT = 1024 * 1024
EXEC_API_VERSIONS = frozenset({"client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"})
EXEC_EXPIRY_MARGIN = 10.0  # seconds before its expirationTimestamp a credential is fetched again
# A plugin that failed is not run again until a backoff has passed (1 s, doubling up to 30 s); meanwhile
# every request fails at once with the plugin's error, instead of each running (and waiting on) it again.
EXEC_BACKOFF_FIRST = 1.0
EXEC_BACKOFF_CAP = 30.0
# How long a request waits for another thread's run of the plugin before it fails as "no credentials":
# a hung plugin must not queue every thread (the lease renewer's deadline is shorter than its timeout).
EXEC_LOCK_WAIT = 3.0


class ConfigError(Exception):
    """The API server's address or credentials cannot be worked out; the message says which field."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What authenticates one request: a bearer token and/or a client certificate and key (PEM)."""

    token: str | None = field(default=None, repr=False)
    certificate: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # secrets never reach a log through a repr
        return f"Credential(token={'***' if self.token else None}, certificate={bool(self.certificate)})"


def _exec_name(spec: ExecSpec) -> str:
    return Path(spec.command).name


class Credentials(Protocol):
    """A source of credentials that may change while the process runs."""

    def current(self) -> Credential:
        """The credential to send now; :class:`ConfigError` if there is none to be had."""
        ...

    def invalidate(self) -> bool:
        """The API server refused the last one (401): forget it; True if asking again may help."""
        ...


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    """A credential written in the kubeconfig itself (or none at all)."""

    credential: Credential = field(default_factory=Credential)

    def current(self) -> Credential:
        """The one credential there is."""
        return self.credential

    def invalidate(self) -> bool:
        """Nothing to ask again: the same token would be refused again."""
        return False


class TokenFile:
    """A bearer token read from a file, again when the file changes and at least every minute."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._stamp: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of what was read
        self._read_at = float("-inf")

    def current(self) -> Credential:
        """The token, re-read if the file changed (a projected token rotated) or a minute has passed."""
        with self._lock:
            try:
                found = self.path.stat()
                stamp = (found.st_ino, found.st_mtime_ns, found.st_size)
                if stamp != self._stamp or self.clock() - self._read_at >= TOKEN_REREAD_SECONDS:
                    token = self.path.read_text(encoding="utf-8").strip()
                    if token:
                        self._token, self._stamp, self._read_at = token, stamp, self.clock()
            except OSError as error:
                if self._token is None:  # once read, the last good token is kept, as client-go does
                    raise ConfigError(f"cannot read the token file {self.path}: {error.strerror}") from None
            if self._token is None:
                raise ConfigError(f"the token file {self.path} is empty")
            return Credential(token=self._token)

    def invalidate(self) -> bool:
        """Read the file again on the next request."""
        with self._lock:
            self._stamp = None
        return True


@dataclass(frozen=True, slots=True)
class ExecSpec:
    """A kubeconfig user's ``exec`` section: the credential plugin to run and how.

    Arguments, environment and cluster information may carry secrets: they are
    left out of the repr, as client-go redacts them.
    """

    api_version: str
    command: str
    args: tuple[str, ...] = field(default=(), repr=False)
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    base_dir: Path = Path()  # the kubeconfig's directory: a relative command is found there
    install_hint: str = ""
    # What KUBERNETES_EXEC_INFO carries with provideClusterInfo (its ``config`` may hold anything).
    cluster: Mapping[str, Any] | None = field(default=None, repr=False)


class ExecPlugin:
    """Credentials from an ``exec`` plugin (ExecCredential v1 or v1beta1), cached until they expire.

    One thread runs the plugin at a time; another wanting a credential meanwhile
    takes the cached one while it is still valid, else waits at most
    :data:`EXEC_LOCK_WAIT` seconds and fails as "no credentials". A run that
    fails is remembered: until its backoff (:data:`EXEC_BACKOFF_FIRST`
    doubling to :data:`EXEC_BACKOFF_CAP`) has passed, every request fails at
    once with the same error rather than running the plugin again.
    """

    def __init__(
        self,
        spec: ExecSpec,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        # (credential, expiry), replaced whole so a thread may read it without the lock
        self._cached: tuple[Credential, datetime | None] | None = None
        self._failure: str | None = None  # the last run's error, repeated until the backoff has passed
        self._failures = 0  # runs that failed in a row
        self._retry_at = float("-inf")  # monotonic time before which the plugin is not run again

    def __repr__(self) -> str:
        return f"ExecPlugin(command={_exec_name(self.spec)!r})"

    def _usable(self, *, margin: float) -> Credential | None:
        """The cached credential if it is valid for more than ``margin`` seconds yet."""
        cached = self._cached
        if cached is None:
            return None
        credential, expires = cached
        if expires is None or (expires - self.clock()).total_seconds() > margin:
            return credential
        return None

    def current(self) -> Credential:
        """The cached credential, or a fresh one from the plugin once the cached one is (nearly) expired.

        :class:`ConfigError` when the plugin fails, while a failed run's backoff lasts,
        and when another thread's run of the plugin takes longer than :data:`EXEC_LOCK_WAIT`.
        """
        credential = self._usable(margin=EXEC_EXPIRY_MARGIN)
        if credential is not None:
            return credential
        if not self._lock.acquire(blocking=False):
            # Another thread is running the plugin: a credential not yet expired is still good meanwhile.
            credential = self._usable(margin=0.0)
            if credential is not None:
                return credential
            if not self._lock.acquire(timeout=EXEC_LOCK_WAIT):
                raise ConfigError(
                    f"no credentials: the exec credential plugin {_exec_name(self.spec)!r} "
                    f"has not answered another request's run within {EXEC_LOCK_WAIT:g}s"
                )
        try:
            credential = self._usable(margin=EXEC_EXPIRY_MARGIN)  # another thread may have just run it
            if credential is not None:
                return credential
            if self._failure is not None and self.monotonic() < self._retry_at:
                return self._still_valid(ConfigError(self._failure))
            try:
                credential, expires = self._run()
            except ConfigError as error:
                self._failures += 1
                self._failure = str(error)
                backoff = min(EXEC_BACKOFF_CAP, EXEC_BACKOFF_FIRST * 2.0 ** (self._failures - 1))
                self._retry_at = self.monotonic() + backoff
                return self._still_valid(error)
            self._cached, self._failure, self._failures = (credential, expires), None, 0
            return credential
        finally:
            self._lock.release()

    def _still_valid(self, error: ConfigError) -> Credential:
        """The cached credential while it has not expired (a refresh failed early), else ``error``."""
        credential = self._usable(margin=0.0)
        if credential is None:
            raise error
        return credential

    def invalidate(self) -> bool:
        """Run the plugin again on the next request (the API server refused the cached credential)."""
        self._cached = None
        return True

    def _run(self) -> tuple[Credential, datetime | None]:
        spec = self.spec
        info: dict[str, Any] = {"interactive": False}
        if spec.cluster is not None:
            info["cluster"] = dict(spec.cluster)
        env = {
            **os.environ,
            **dict(spec.env),
            "KUBERNETES_EXEC_INFO": json.dumps(
                {"apiVersion": spec.api_version, "kind": "ExecCredential", "spec": info}
            ),
        }
        command = spec.command
        if os.sep in command and not os.path.isabs(command):  # noqa: PTH117 - a str, maybe a bare name
            command = str(spec.base_dir / command)
        name = _exec_name(spec)
        hint = f" ({spec.install_hint.strip()})" if spec.install_hint.strip() else ""
        try:
            # In this process's own working directory, as client-go runs it (only the command's
            # relative path is the kubeconfig's).
            done = processes.run(
                [command, *spec.args], env=env, timeout=EXEC_TIMEOUT, max_output=EXEC_MAX_OUTPUT
            )
        except OSError as error:
            raise ConfigError(
                f"cannot run the exec credential plugin {name!r}: {error.strerror}{hint}"
            ) from None
        if done.code != 0:
            # Its stderr is not quoted: a credential helper may print what it was handed, and this
            # message can reach an app's status, an Event or the log. Run the plugin by hand to see it.
            raise ConfigError(
                f"the exec credential plugin {name!r} failed ({done.ended}, exit code {done.code})"
            )
        return _exec_status(done.stdout, spec.api_version, name)


def _exec_status(stdout: bytes, api_version: str, name: str) -> tuple[Credential, datetime | None]:
    """The credential and its expiry from a plugin's ExecCredential (never quoting the output)."""
    try:
        answer = json.loads(stdout)
    except ValueError:
        raise ConfigError(f"the exec credential plugin {name!r} did not print an ExecCredential") from None
    if not isinstance(answer, dict) or answer.get("kind") != "ExecCredential":
        raise ConfigError(f"the exec credential plugin {name!r} did not print an ExecCredential")
    if answer.get("apiVersion") != api_version:
        raise ConfigError(
            f"the exec credential plugin {name!r} answered apiVersion {answer.get('apiVersion')!r}, "
            f"not the {api_version!r} the kubeconfig asked for"
        )
    status = answer.get("status")
    if not isinstance(status, dict):
        raise ConfigError(f"the exec credential plugin {name!r} printed an ExecCredential without status")
    token = str(status.get("token") or "") or None
    certificate = str(status.get("clientCertificateData") or "") or None
    key = str(status.get("clientKeyData") or "") or None
    if bool(certificate) != bool(key):
        raise ConfigError(
            f"the exec credential plugin {name!r} gave clientCertificateData and clientKeyData "
            "only one without the other"
        )
    if not token and not certificate:
        raise ConfigError(
            f"the exec credential plugin {name!r} gave neither a token nor a client certificate"
        )
    expires: datetime | None = None
    if status.get("expirationTimestamp"):
        try:
            expires = datetime.fromisoformat(str(status["expirationTimestamp"]))
        except ValueError:
            raise ConfigError(
                f"the exec credential plugin {name!r} gave an unreadable expirationTimestamp"
            ) from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
    return Credential(token=token, certificate=certificate, private_key=key), expires


@dataclass(frozen=True, slots=True)
class Configuration:
    """One API server and one identity: what a connection to it needs.

    Certificate data is PEM text; paths are absolute. ``credentials`` gives
    the bearer token and/or client certificate to send with each request
    (fixed, re-read from a file, or from an exec plugin).
    """

    host: str
    ca_path: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    certificate_path: str | None = None
    private_key_path: str | None = None
    certificate_data: str | None = field(default=None, repr=False)
    private_key_data: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # Its own repr shows no secret (a Credential's hides its token and key), but it is no place to look.
    credentials: Credentials = field(default_factory=StaticCredentials, repr=False)


def in_cluster(
    environ: Mapping[str, str] | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
) -> Configuration | None:
    """The pod's own configuration, or None when this process does not run in a pod."""
    environ = os.environ if environ is None else environ
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = account_dir / "token"
    if not host or not port or not token.is_file():
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca = account_dir / "ca.crt"
    credentials = TokenFile(token)
    credentials.current()  # a token that cannot be read fails at start, not on the first request
    return Configuration(
        host=f"https://{host}:{port}", ca_path=str(ca) if ca.is_file() else None, credentials=credentials
    )


def kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """``$KUBECONFIG`` split on the path separator, or ``~/.kube/config``."""
    environ = os.environ if environ is None else environ
    listed = [Path(part).expanduser() for part in environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    return listed or [Path("~/.kube/config").expanduser()]


@dataclass(slots=True)
class _Merged:
    """Kubeconfig files merged as kubectl merges them: the first file to name an entry wins."""

    current_context: str = ""
    contexts: dict[str, tuple[Mapping[str, Any], Path]] = field(default_factory=dict)
    clusters: dict[str, tuple[Mapping[str, Any], Path]] = field(default_factory=dict)
    users: dict[str, tuple[Mapping[str, Any], Path]] = field(default_factory=dict, repr=False)  # tokens, keys

    def add(self, path: Path) -> None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as error:
            raise ConfigError(f"cannot read the kubeconfig {path}: {error.strerror}") from None
        except yaml.YAMLError:
            raise ConfigError(f"the kubeconfig {path} is not valid YAML") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"the kubeconfig {path} is not a mapping")
        # The directory of the path as given, made absolute without following symlinks: client-go's
        # filepath.Abs(filepath.Dir(path)) (lexical, like os.path.abspath; Path.resolve() would follow a
        # symlinked kubeconfig to its target's directory).
        base = Path(os.path.abspath(path)).parent  # noqa: PTH100 - lexical, as filepath.Abs
        self.current_context = self.current_context or str(loaded.get("current-context") or "")
        for section, key, into in (
            ("contexts", "context", self.contexts),
            ("clusters", "cluster", self.clusters),
            ("users", "user", self.users),
        ):
            for entry in loaded.get(section) or ():
                if isinstance(entry, dict) and entry.get("name") and isinstance(entry.get(key) or {}, dict):
                    into.setdefault(str(entry["name"]), (entry.get(key) or {}, base))


def from_kubeconfig(paths: Sequence[Path], *, context: str | None = None) -> Configuration:
    """The configuration of ``context`` (default: the current context) in the merged kubeconfig ``paths``."""
    merged = _Merged()
    existing = [path for path in paths if path.exists()] if len(paths) > 1 else list(paths)
    if not existing:
        raise ConfigError(f"no kubeconfig found at {os.pathsep.join(str(p) for p in paths)}")
    for path in existing:
        merged.add(path)
    where = os.pathsep.join(str(p) for p in existing)
    name = context or merged.current_context
    if not name:
        raise ConfigError(f"the kubeconfig {where} has no current-context")
    if name not in merged.contexts:
        raise ConfigError(f"context {name!r} is not in the kubeconfig {where}")
    ctx, _ = merged.contexts[name]
    cluster_name, user_name = str(ctx.get("cluster") or ""), str(ctx.get("user") or "")
    if cluster_name not in merged.clusters:
        raise ConfigError(f"cluster {cluster_name!r} of context {name!r} is not in the kubeconfig {where}")
    cluster, cluster_base = merged.clusters[cluster_name]
    if user_name and user_name not in merged.users:
        raise ConfigError(f"user {user_name!r} of context {name!r} is not in the kubeconfig {where}")
    user, user_base = merged.users[user_name] if user_name else ({}, cluster_base)
    return _configuration(cluster, cluster_base, user, user_base, where=f"context {name!r}")


_EXEC_EXTENSION = "client.authentication.k8s.io/exec"  # plugin settings, sent with provideClusterInfo
_UNSUPPORTED_CLUSTER = ("proxy-url",)
_UNSUPPORTED_USER = ("auth-provider", "as", "as-uid", "as-groups", "as-user-extra")


def _configuration(
    cluster: Mapping[str, Any], cluster_base: Path, user: Mapping[str, Any], user_base: Path, *, where: str
) -> Configuration:
    for key in _UNSUPPORTED_CLUSTER:
        if cluster.get(key):
            raise ConfigError(f"{where}: the cluster's {key} is not supported by gitward")
    for key in _UNSUPPORTED_USER:
        if user.get(key):
            raise ConfigError(f"{where}: the user's {key} is not supported by gitward (use an exec plugin)")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError(f"{where}: the cluster has no server")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: the cluster's server {server!r} is not an http(s) URL")
    insecure = bool(cluster.get("insecure-skip-tls-verify"))
    certificate_path, certificate_data = _file_or_data(user, "client-certificate", user_base, where)
    key_path, key_data = _file_or_data(user, "client-key", user_base, where)
    if bool(certificate_path or certificate_data) != bool(key_path or key_data):
        raise ConfigError(f"{where}: the user has a client certificate without a key, or a key alone")
    ca_path, ca_data = _file_or_data(cluster, "certificate-authority", cluster_base, where)
    if insecure and (ca_path or ca_data):  # client-go's words: a CA and no verification contradict
        raise ConfigError(
            f"{where}: specifying a root certificates file with the insecure flag is not allowed "
            "(the cluster has both insecure-skip-tls-verify and certificate-authority)"
        )
    return Configuration(
        host=server,
        ca_path=ca_path,
        ca_data=ca_data,
        insecure=insecure,
        tls_server_name=str(cluster.get("tls-server-name") or "") or None,
        certificate_path=certificate_path,
        private_key_path=key_path,
        certificate_data=certificate_data,
        private_key_data=key_data,
        username=str(user.get("username") or "") or None,
        password=str(user.get("password") or "") or None,
        credentials=_credentials(user, user_base, cluster, (ca_path, ca_data), where=where),
    )


def _file_or_data(
    section: Mapping[str, Any], key: str, base: Path, where: str
) -> tuple[str | None, str | None]:
    """``key`` as an absolute path (relative to the kubeconfig) or ``key-data`` decoded to PEM text."""
    encoded = section.get(f"{key}-data")
    if encoded:
        try:
            return None, base64.b64decode(str(encoded), validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ConfigError(f"{where}: {key}-data is not base64 of a PEM text") from None
    path = section.get(key)
    if path:
        return str(base / Path(str(path)).expanduser()), None
    return None, None


def _credentials(
    user: Mapping[str, Any],
    base: Path,
    cluster: Mapping[str, Any],
    ca: tuple[str | None, str | None],
    *,
    where: str,
) -> Credentials:
    """A ``tokenFile`` (it wins over ``token``, as in client-go), a ``token``, an ``exec`` plugin, or none."""
    if user.get("tokenFile"):
        return TokenFile(base / Path(str(user["tokenFile"])).expanduser())
    if user.get("token"):
        return StaticCredentials(Credential(token=str(user["token"])))
    if user.get("exec"):
        return ExecPlugin(_exec_spec(user["exec"], base, cluster, ca, where=where))
    return StaticCredentials()


def _ca_data_for_plugin(ca: tuple[str | None, str | None], where: str) -> str | None:
    """The cluster's CA, from its file or its data, base64 as ExecCredential's ``certificate-authority-data``.

    client-go's ConfigToExecCluster reads a CA file and passes its bytes, so a plugin sees
    the CA however the kubeconfig gives it.
    """
    path, data = ca
    if data is not None:
        return base64.b64encode(data.encode("ascii")).decode("ascii")
    if path is None:
        return None
    try:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError as error:
        raise ConfigError(
            f"{where}: cannot read the certificate-authority {path} for the exec plugin: {error.strerror}"
        ) from None


def _exec_spec(
    section: object,
    base: Path,
    cluster: Mapping[str, Any],
    ca: tuple[str | None, str | None],
    *,
    where: str,
) -> ExecSpec:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: the user's exec is not a mapping")
    api_version = str(section.get("apiVersion") or "")
    if api_version not in EXEC_API_VERSIONS:
        raise ConfigError(
            f"{where}: exec apiVersion {api_version!r} is not supported "
            f"(supported: {', '.join(sorted(EXEC_API_VERSIONS))})"
        )
    if not section.get("command"):
        raise ConfigError(f"{where}: the user's exec has no command")
    if section.get("interactiveMode") == "Always":
        raise ConfigError(f"{where}: exec interactiveMode Always is not supported (gitward has no terminal)")
    env: list[tuple[str, str]] = []
    for item in section.get("env") or ():
        if not isinstance(item, dict) or not item.get("name"):
            raise ConfigError(f"{where}: every exec env entry needs a name and a value")
        env.append((str(item["name"]), str(item.get("value") or "")))
    info: dict[str, Any] | None = None
    if section.get("provideClusterInfo"):
        info = {
            "server": cluster.get("server"),
            "tls-server-name": cluster.get("tls-server-name"),
            "insecure-skip-tls-verify": bool(cluster.get("insecure-skip-tls-verify")),
            "certificate-authority-data": _ca_data_for_plugin(ca, where),
            "proxy-url": cluster.get("proxy-url"),
            "config": next(
                (
                    extension.get("extension")
                    for extension in cluster.get("extensions") or ()
                    if isinstance(extension, dict) and extension.get("name") == _EXEC_EXTENSION
                ),
                None,
            ),
        }
        info = {key: value for key, value in info.items() if value not in (None, "")}
    return ExecSpec(
        api_version=api_version,
        command=str(section["command"]),
        args=tuple(str(arg) for arg in section.get("args") or ()),
        env=tuple(env),
        base_dir=base,
        install_hint=str(section.get("installHint") or ""),
        cluster=info,
    )


def load(kubeconfig: str | None = None) -> Configuration:
    """In-cluster when ``kubeconfig`` is None and this runs in a pod; else the kubeconfig (given, or default).

    The credentials are fetched once here, so a token file that cannot be read or a
    plugin that fails stops the program at start, with the reason.
    """
    configuration = in_cluster() if kubeconfig is None else None
    if configuration is None:
        paths = kubeconfig_paths() if kubeconfig is None else [Path(kubeconfig).expanduser()]
        configuration = from_kubeconfig(paths)
        configuration.credentials.current()
    return configuration
