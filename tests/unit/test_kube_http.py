"""gitward's own API client against a real HTTPS server on loopback: TLS, credentials, pooling, errors, watches."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import ssl
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from urllib3.util import Retry

from gitward import metrics
from gitward.api.conditions import Reason
from gitward.errors import Waiting
from gitward.kube import clients
from gitward.kube.config import ConfigError, Configuration, Credential, StaticCredentials
from gitward.kube.http import Connection
from gitward.kube.objects import APIError, Objects, fetch, stream_events
from gitward.kube.reads import KubeReader


@dataclasses.dataclass
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    **kwargs: Any,
) -> str:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0] if issuer else subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    if kwargs.get("names"):
        builder = builder.add_extension(x509.SubjectAlternativeName(kwargs["names"]), critical=False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _certificate("test-ca", ca_key, None)
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("kube.test")]
    return Pki(
        ca=ca,
        server_cert=_certificate("apiserver", server_key, ("test-ca", ca_key), names=names),
        server_key=_pem_key(server_key),
        client_cert=_certificate("gitward-client", client_key, ("test-ca", ca_key)),
        client_key=_pem_key(client_key),
        other_ca=_certificate("other-ca", other_key, None),
    )


class FakeAPIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, pki: Pki, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        (directory / "server.crt").write_text(pki.server_cert)
        (directory / "server.key").write_text(pki.server_key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "server.crt", directory / "server.key")
        context.load_verify_locations(cadata=pki.ca)
        context.verify_mode = ssl.CERT_OPTIONAL
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.release_held = threading.Event()  # ends the watches on /held paths, kept open until then
        self.throttle = 0  # how many 429s to answer before the real answer
        self.accepted_token = "good"
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeAPIServer
    watch_events: ClassVar[list[dict[str, Any]]] = [
        {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "2"}}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}},
    ]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.connection_number = self.server.connections  # which connection each request came on

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item[0] for item in peer["subject"]).get("commonName") if peer else None
        with self.server.lock:
            self.server.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": self.rfile.read(length) if length else b"",
                    "client": subject,
                    "connection": self.connection_number,
                }
            )

    def do_GET(self) -> None:
        self._record()
        authorization = self.headers.get("Authorization", "")
        if authorization not in {f"Bearer {self.server.accepted_token}", ""} and "cert" not in self.path:
            self._send(401, {"kind": "Status", "message": "Unauthorized", "code": 401})
            return
        if "watch=true" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.path.startswith("/held"):  # one event, then the stream stays open, as a quiet watch does
                self._chunk(json.dumps(self.watch_events[0]).encode() + b"\n")
                self.wfile.flush()
                self.server.release_held.wait(timeout=60)
                with contextlib.suppress(OSError):  # the client may have hung up, as it should
                    self.wfile.write(b"0\r\n\r\n")
                return
            if self.path.startswith("/garbled"):
                self._chunk(json.dumps(self.watch_events[0]).encode() + b"\n" + b"not json\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            for event in self.watch_events:
                line = json.dumps(event).encode() + b"\n"
                half = len(line) // 2  # an event split across chunks is put back together
                for part in (line[:half], line[half:]):
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/missing"):
            self._send(404, {"kind": "Status", "message": 'configmaps "x" not found', "code": 404})
            return
        with self.server.lock:
            throttled = self.server.throttle > 0
            self.server.throttle -= 1
        if throttled:
            self._send(429, {"kind": "Status", "message": "slow down", "code": 429}, {"Retry-After": "0"})
            return
        self._send(200, {"path": self.path})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def do_PATCH(self) -> None:
        self._record()
        self._send(200, {"patched": True})


@pytest.fixture
def server(pki: Pki, tmp_path: Path) -> Iterator[FakeAPIServer]:
    made = FakeAPIServer(pki, tmp_path)
    made.thread.start()
    try:
        yield made
    finally:
        made.release_held.set()
        made.shutdown()
        made.server_close()


def configuration(server: FakeAPIServer, pki: Pki, **changes: Any) -> Configuration:
    base = Configuration(
        host=server.url, ca_data=pki.ca, credentials=StaticCredentials(Credential(token="good"))
    )
    return dataclasses.replace(base, **changes)


def test_requests_carry_the_token_share_one_connection_and_are_counted(server, pki):
    api = clients.api_client(configuration(server, pki))
    before = metrics.KUBE_REQUESTS.labels("GET")._value.get()  # noqa: SLF001 - the counter's value
    for _ in range(3):
        answer = fetch(api, "GET", "/api/v1/namespaces/a/configmaps/x", query=[("labelSelector", "a in (b)")])
        assert answer.ok
        assert json.loads(answer.data) == {
            "path": "/api/v1/namespaces/a/configmaps/x?labelSelector=a+in+%28b%29"
        }
    assert server.connections == 1  # keep-alive: one TLS handshake for all three
    assert metrics.KUBE_REQUESTS.labels("GET")._value.get() == before + 3  # noqa: SLF001
    assert {r["headers"]["Authorization"] for r in server.requests} == {"Bearer good"}
    assert {r["headers"]["User-Agent"] for r in server.requests} == {"gitward"}
    api.close()


def test_an_impersonating_client_sends_the_header_on_every_request(server, pki):
    api = clients.impersonating(configuration(server, pki), clients.ServiceAccountRef("team-a", "deployer"))
    fetch(api, "GET", "/one")
    Objects(clients.api_client(configuration(server, pki)), impersonate="system:serviceaccount:b:c")._call(  # noqa: SLF001
        "PATCH", "/two", body={"x": 1}, content_type="application/merge-patch+json"
    )
    first, second = server.requests
    assert first["headers"]["Impersonate-User"] == "system:serviceaccount:team-a:deployer"
    assert second["headers"]["Impersonate-User"] == "system:serviceaccount:b:c"
    assert second["headers"]["Content-Type"] == "application/merge-patch+json"
    assert json.loads(second["body"]) == {"x": 1}


def test_a_client_certificate_given_as_data_is_presented_and_leaves_no_file(
    server, pki, tmp_path, monkeypatch
):
    private = tmp_path / "private-tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    api = Connection(
        configuration(
            server,
            pki,
            certificate_data=pki.client_cert,
            private_key_data=pki.client_key,
            credentials=StaticCredentials(),
        )
    )
    assert fetch(api, "GET", "/cert").ok
    assert server.requests[0]["client"] == "gitward-client"
    assert "Authorization" not in server.requests[0]["headers"]
    assert list(private.iterdir()) == []  # written 0600 in a private directory, loaded, removed


def test_a_client_certificate_from_files(server, pki, tmp_path):
    (tmp_path / "me.crt").write_text(pki.client_cert)
    (tmp_path / "me.key").write_text(pki.client_key)
    api = Connection(
        configuration(
            server,
            pki,
            certificate_path=str(tmp_path / "me.crt"),
            private_key_path=str(tmp_path / "me.key"),
            credentials=StaticCredentials(),
        )
    )
    assert fetch(api, "GET", "/cert").ok
    assert server.requests[0]["client"] == "gitward-client"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # asked for here
def test_a_server_the_ca_does_not_vouch_for_is_no_answer_unless_insecure(server, pki):
    with pytest.raises(APIError) as refused:
        fetch(Connection(configuration(server, pki, ca_data=pki.other_ca)), "GET", "/x")
    assert refused.value.status == 0
    assert "cannot reach the API server" in refused.value.message
    assert server.requests == []
    insecure = Connection(configuration(server, pki, ca_data=None, insecure=True))
    assert fetch(insecure, "GET", "/x").ok


def test_tls_server_name_is_the_name_checked(server, pki):
    assert fetch(Connection(configuration(server, pki, tls_server_name="kube.test")), "GET", "/x").ok
    with pytest.raises(APIError) as refused:
        fetch(Connection(configuration(server, pki, tls_server_name="other.test")), "GET", "/x")
    assert refused.value.status == 0


def test_a_ca_file_and_a_path_prefix_on_the_server(server, pki, tmp_path):
    (tmp_path / "ca.crt").write_text(pki.ca)
    api = Connection(
        configuration(
            server, pki, host=f"{server.url}/proxy/", ca_data=None, ca_path=str(tmp_path / "ca.crt")
        )
    )
    assert json.loads(fetch(api, "GET", "/api/v1").data) == {"path": "/proxy/api/v1"}


class Rotating:
    """A credential source whose first token has expired: refused once, then the fresh one."""

    def __init__(self) -> None:
        self.tokens = ["expired", "good"]
        self.asked_again = 0

    def current(self) -> Credential:
        return Credential(token=self.tokens[0])

    def invalidate(self) -> bool:
        self.asked_again += 1
        if len(self.tokens) > 1:
            self.tokens.pop(0)
        return True


def test_a_refused_token_is_fetched_again_once(server, pki):
    source = Rotating()
    api = Connection(configuration(server, pki, credentials=source))
    assert fetch(api, "GET", "/x").ok
    assert [r["headers"]["Authorization"] for r in server.requests] == ["Bearer expired", "Bearer good"]
    server.accepted_token = "something-else"
    assert fetch(api, "GET", "/x").status == 401  # refused again after one fresh try: the answer stands
    assert source.asked_again == 2


def test_a_credential_that_cannot_be_had_is_no_answer(server, pki):
    class Broken:
        def current(self) -> Credential:
            raise ConfigError("the exec credential plugin 'x' failed")

        def invalidate(self) -> bool:
            return True

    api = Connection(configuration(server, pki, credentials=Broken()))
    with pytest.raises(APIError) as raised:
        fetch(api, "GET", "/x")
    assert (raised.value.status, raised.value.message) == (
        0,
        "credentials could not be obtained: the exec credential plugin 'x' failed",
    )
    with pytest.raises(APIError) as raised:
        next(stream_events(api, "/w", query=[("watch", "true")], timeout=5))
    assert raised.value.status == 0
    assert raised.value.message.startswith("credentials could not be obtained")
    assert server.requests == []


class PluginRotatingTo:
    """An exec plugin's credentials: a working client certificate, then (rotated) a broken one."""

    def __init__(self, certificate: str, key: str) -> None:
        self.credential = Credential(certificate=certificate, private_key=key)

    def current(self) -> Credential:
        return self.credential

    def invalidate(self) -> bool:
        return True


def test_tls_that_cannot_be_set_up_is_no_answer_never_a_config_error(server, pki, tmp_path):
    """A client certificate or CA that does not load at request time is APIError(0), quoting no key."""
    missing = configuration(
        server,
        pki,
        certificate_path=str(tmp_path / "gone.crt"),
        private_key_path=str(tmp_path / "gone.key"),
        credentials=StaticCredentials(),
    )
    (tmp_path / "not-a-ca.crt").write_text("not a certificate")
    for broken in (
        missing,
        dataclasses.replace(missing, certificate_path=None, certificate_data=pki.client_cert),
        configuration(server, pki, ca_data=None, ca_path=str(tmp_path / "absent-ca.crt")),
        configuration(server, pki, ca_data=None, ca_path=str(tmp_path / "not-a-ca.crt")),
        configuration(server, pki, ca_data="not a certificate either"),
    ):
        with pytest.raises(APIError) as raised:
            fetch(Connection(broken), "GET", "/x")
        assert raised.value.status == 0
        assert raised.value.message.startswith("credentials could not be obtained: cannot "), raised.value
    # An exec plugin's certificate rotates to one that does not match its key: no answer, not a crash.
    other_key = _pem_key(ec.generate_private_key(ec.SECP256R1()))
    source = PluginRotatingTo(pki.client_cert, pki.client_key)
    api = Connection(configuration(server, pki, credentials=source))
    assert fetch(api, "GET", "/cert").ok
    source.credential = Credential(certificate=pki.client_cert, private_key=other_key)
    with pytest.raises(APIError) as raised:
        fetch(api, "GET", "/cert")
    assert (raised.value.status, raised.value.message) == (
        0,
        "credentials could not be obtained: the client certificate and key do not load (not PEM, or not a pair)",
    )
    assert other_key not in str(raised.value)
    assert len(server.requests) == 1
    reader = KubeReader(api, operator_namespace="gitward")
    with pytest.raises(Waiting) as waiting:  # a reconcile waits for the API, as for any outage
        reader.tenant("team-a")
    assert waiting.value.reason == Reason.API_UNAVAILABLE
    assert "credentials could not be obtained" in str(waiting.value)
    source.credential = Credential(certificate=pki.client_cert, private_key=pki.client_key)
    assert fetch(api, "GET", "/cert").ok  # rotated back: requests work again


def test_throttling_is_waited_out_and_errors_quote_the_server(server, pki):
    objects = Objects(clients.api_client(configuration(server, pki)))
    server.throttle = 2
    assert objects._call("GET", "/throttled") == {"path": "/throttled"}  # noqa: SLF001
    assert len(server.requests) == 3
    with pytest.raises(APIError) as missing:
        objects._call("GET", "/missing")  # noqa: SLF001
    assert (missing.value.status, missing.value.message) == (404, 'configmaps "x" not found')


def test_a_watch_streams_events_line_by_line_and_raises_its_error(server, pki):
    api = clients.api_client(configuration(server, pki))
    before = metrics.KUBE_REQUESTS.labels("WATCH")._value.get()  # noqa: SLF001
    events = stream_events(api, "/api/v1/namespaces/a/configmaps", query=[("watch", "true")], timeout=(5, 30))
    assert [next(events)["type"], next(events)["type"]] == ["ADDED", "BOOKMARK"]
    with pytest.raises(APIError) as ended:
        next(events)
    assert (ended.value.status, ended.value.message) == (410, "too old resource version")
    assert metrics.KUBE_REQUESTS.labels("WATCH")._value.get() == before + 1  # noqa: SLF001


def test_a_watch_left_mid_stream_closes_its_connection(server, pki):
    """Its connection must not go back to the pool with the stream still running in it.

    The server keeps the stream open and quiet (nothing unread in the socket, so urllib3
    cannot tell the connection is busy), and the next request is not retried: were the
    connection pooled, that request would go down the watch's connection and get no answer.
    """
    api = clients.api_client(configuration(server, pki))
    events = stream_events(api, "/held", query=[("watch", "true")], timeout=(5, 30))
    assert next(events)["type"] == "ADDED"
    events.close()
    pool = api._pool  # noqa: SLF001 - what the pool holds is the point
    assert pool is not None
    pooled = [conn for conn in list(pool.pool.queue) if conn is not None]
    assert all(not conn.is_connected for conn in pooled), "the watch's open connection went back to the pool"
    after = fetch(api, "GET", "/after", timeout=(5, 5), retries=Retry(0, read=0, connect=0))
    assert json.loads(after.data) == {"path": "/after"}
    watch, follow_up = server.requests
    assert watch["connection"] != follow_up["connection"]  # a connection of its own
    assert server.connections == 2
    api.close()


def test_a_watch_line_that_is_not_an_event_is_no_answer(server, pki):
    events = stream_events(
        clients.api_client(configuration(server, pki)), "/garbled", query=[("watch", "true")], timeout=5
    )
    assert next(events)["type"] == "ADDED"
    with pytest.raises(APIError) as raised:
        next(events)
    assert (raised.value.status, raised.value.message) == (0, "the watch sent a line that is not JSON")


def test_no_server_at_all_is_status_zero(pki):
    api = Connection(Configuration(host="https://127.0.0.1:9", ca_data=pki.ca))
    with pytest.raises(APIError) as raised:
        fetch(api, "GET", "/x", timeout=5)
    assert raised.value.status == 0


def test_a_host_that_is_not_a_url_is_refused():
    with pytest.raises(ConfigError):
        Connection(Configuration(host="kube.example:6443"))
