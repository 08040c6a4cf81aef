"""One keep-alive connection pool to the API server, with its TLS, its credentials and its request count.

gitward speaks plain REST with JSON bodies, so what it needed from the
``kubernetes`` package was only this: a ``urllib3`` pool set up from a
:class:`~gitward.kube.config.Configuration`. Every reconcile thread shares
one pool (64 connections, never blocking: an overflow opens one more
rather than waiting), so a busy operator does not pay a TLS handshake per
request.

TLS trusts the configured CA (data is loaded directly, never written to
disk). A client certificate given as data must go through files for
``ssl``; it is written to a private directory (0700, files 0600), loaded,
and removed at once. A credential that changes (an exec plugin's client
certificate) makes a new pool; a token is a header per request, read from
its source each time (a rotated token file, an expired plugin token). A
401 on a credential that can be fetched again is retried once with a
fresh one, as client-go does.

Errors are urllib3's (``HTTPError``) and ``OSError``, both meaning "no
answer"; a credential that cannot be had (a token file gone, a plugin
failing or backing off) or TLS that cannot be set up with it (a client
certificate file missing, a plugin's certificate and key not a pair, a CA
that does not load) is :class:`CredentialsUnavailable`, an ``HTTPError``
too: no request was made. A request never raises
:class:`~gitward.kube.config.ConfigError`. Mapping answers onto errors is
:mod:`gitward.kube.objects`'s job.
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import HTTPError
from urllib3.util import Retry, Timeout, parse_url

from gitward import metrics
from gitward.kube.config import ConfigError, Configuration, Credential

POOL_SIZE: Final = 64
USER_AGENT: Final = "gitward"
_UNAUTHORIZED = 401
# Connection failures are retried (nothing was sent); a broken answer once, and only for idempotent
# methods (urllib3's rule), so a POST or PATCH is never sent twice; no retry on any status.
DEFAULT_RETRIES: Final = Retry(
    total=3, connect=3, read=1, redirect=0, status=0, other=0, raise_on_status=False
)

Timeouts = float | tuple[float, float]


class CredentialsUnavailable(HTTPError):  # noqa: N818 - named for the state, like urllib3's own errors
    """The credentials could not be had, or TLS not set up with them: no request was made.

    The message says why, never quoting a token or a key.
    """


def _timeout(value: Timeouts) -> Timeout:
    """A number is the whole request's limit; a pair is (connect, read), as the old client took them."""
    if isinstance(value, tuple):
        return Timeout(connect=value[0], read=value[1])
    return Timeout(total=value)


def ssl_context(configuration: Configuration, credential: Credential) -> ssl.SSLContext:
    """TLS for the API server: its CA (or the system's), a client certificate if any; none if insecure.

    :class:`ConfigError` when the CA or the client certificate does not load (never quoting a key).
    """
    try:
        context = ssl.create_default_context(cafile=configuration.ca_path, cadata=configuration.ca_data)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        where = configuration.ca_path or "given as data"
        raise ConfigError(
            f"cannot load the certificate authority ({where}): "
            f"{getattr(error, 'strerror', None) or 'not PEM certificates'}"
        ) from None
    if configuration.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if credential.certificate and credential.private_key:  # from an exec plugin: it wins
        _load_pair(context, credential.certificate, credential.private_key)
    elif configuration.certificate_path and configuration.private_key_path:
        try:
            context.load_cert_chain(configuration.certificate_path, configuration.private_key_path)
        except OSError as error:
            raise ConfigError(
                f"cannot load the client certificate {configuration.certificate_path} "
                f"with its key {configuration.private_key_path}: {error.strerror or 'not PEM, or not a pair'}"
            ) from None
    elif configuration.certificate_path or configuration.certificate_data:  # one as a file, one as data
        _load_pair(
            context,
            configuration.certificate_data or _read(configuration.certificate_path),
            configuration.private_key_data or _read(configuration.private_key_path),
        )
    return context


def _read(path: str | None) -> str:
    try:
        return Path(path or "").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {getattr(error, 'strerror', None) or 'not PEM'}") from None


def _load_pair(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """Load a PEM certificate and key: ``ssl`` reads only files, so they exist (0600) just for that."""
    try:
        with tempfile.TemporaryDirectory(prefix="gitward-tls-") as private:  # mode 0700
            cert_file, key_file = Path(private, "client.crt"), Path(private, "client.key")
            for path, text in ((cert_file, certificate), (key_file, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as out:
                    out.write(text)
            try:
                context.load_cert_chain(cert_file, key_file)
            except (OSError, ValueError):  # ssl.SSLError is an OSError; the message never quotes the key
                raise ConfigError(
                    "the client certificate and key do not load (not PEM, or not a pair)"
                ) from None
    except (OSError, UnicodeEncodeError) as error:  # the private directory: no space, no temp dir
        raise ConfigError(
            f"cannot load the client certificate and key: {getattr(error, 'strerror', None) or 'not PEM'}"
        ) from None


class Connection:
    """Requests to one API server as one identity, through one shared pool of keep-alive connections.

    ``headers`` go with every request (``Impersonate-User`` for a client acting as a
    tenant); with ``counted``, each request is counted by verb in
    ``gitward_kube_requests_total`` (``WATCH`` for a watch).
    """

    def __init__(
        self, configuration: Configuration, *, headers: Mapping[str, str] | None = None, counted: bool = False
    ) -> None:
        self.configuration = configuration
        self.headers = dict(headers or {})
        self.counted = counted
        url = parse_url(configuration.host)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ConfigError(f"the API server address {configuration.host!r} is not an http(s) URL")
        self._scheme = url.scheme
        self._host = url.host.strip("[]")
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._prefix = (url.path or "").rstrip("/")
        self._lock = threading.Lock()
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._pool_key: tuple[str | None, str | None] | None = None

    def _pool_for(self, credential: Credential) -> urllib3.HTTPConnectionPool:
        """The pool for this client certificate (made on first use, and again if the certificate changed)."""
        key = (credential.certificate, credential.private_key)
        with self._lock:
            if self._pool is not None and self._pool_key == key:
                return self._pool
            old = self._pool
            common = {"maxsize": POOL_SIZE, "block": False, "retries": DEFAULT_RETRIES}
            if self._scheme == "https":
                try:
                    context = ssl_context(self.configuration, credential)
                except ConfigError as error:  # a CA or client certificate that does not load: no request
                    raise CredentialsUnavailable(str(error)) from None
                except (OSError, ValueError) as error:  # anything else setting up TLS
                    raise CredentialsUnavailable(f"cannot set up TLS: {type(error).__name__}") from None
                insecure = self.configuration.insecure
                self._pool = urllib3.HTTPSConnectionPool(
                    self._host,
                    self._port,
                    ssl_context=context,
                    cert_reqs="CERT_NONE" if insecure else "CERT_REQUIRED",
                    assert_hostname=False if insecure else self.configuration.tls_server_name,
                    server_hostname=self.configuration.tls_server_name,
                    **common,  # type: ignore[arg-type]
                )
            else:
                self._pool = urllib3.HTTPConnectionPool(self._host, self._port, **common)  # type: ignore[arg-type]
            self._pool_key = key
        if old is not None:
            old.close()
        return self._pool

    def _credential(self) -> Credential:
        try:
            return self.configuration.credentials.current()
        except ConfigError as error:
            raise CredentialsUnavailable(str(error)) from None

    def _invalidate(self) -> bool:
        try:
            return self.configuration.credentials.invalidate()
        except ConfigError:  # nothing to ask again: the refusal stands
            return False

    def _auth(self, credential: Credential) -> dict[str, str]:
        if credential.token:
            return {"Authorization": f"Bearer {credential.token}"}
        if self.configuration.username and self.configuration.password is not None:
            pair = f"{self.configuration.username}:{self.configuration.password}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}
        return {}

    def url(self, path: str, query: Sequence[tuple[str, str]] = ()) -> str:
        """The request target: the server's path prefix, ``path``, and the query string."""
        return f"{self._prefix}{path}" + (f"?{urlencode(list(query))}" if query else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeouts = 60,
        retries: Retry | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; the answer's body is not read yet (read or stream it, then release it).

        Raises urllib3's ``HTTPError`` or ``OSError`` when there is no answer
        (:class:`CredentialsUnavailable` when none was asked for: no credentials, or no TLS).
        """
        target = self.url(path, query)
        verb = "WATCH" if method == "GET" and "watch=true" in target.lower() else method
        for attempt in range(2):
            credential = self._credential()
            pool = self._pool_for(credential)
            if self.counted:
                metrics.KUBE_REQUESTS.labels(verb).inc()
            response = pool.urlopen(
                method,
                target,
                body=body,
                headers={
                    "User-Agent": USER_AGENT,
                    **self._auth(credential),
                    **self.headers,
                    **(headers or {}),
                },
                timeout=_timeout(timeout),
                retries=retries if retries is not None else DEFAULT_RETRIES,
                redirect=False,
                preload_content=False,
                release_conn=False,
            )
            if response.status != _UNAUTHORIZED or attempt or not self._invalidate():
                return response
            # Refused: the token rotated or the plugin's credential expired early. Once more, fresh.
            with contextlib.suppress(HTTPError, OSError):
                response.drain_conn()
            response.release_conn()
        raise AssertionError("unreachable: the second attempt returns")  # pragma: no cover

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            pool, self._pool, self._pool_key = self._pool, None, None
        if pool is not None:
            pool.close()
