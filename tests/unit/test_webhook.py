"""The push webhook: signatures per provider, constant-time checks, size limit, never trusting content."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Self

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from yarl import URL

from gitward.webhook import MAX_BODY, authentic, make_app

SECRET = b"s3cret"
BODY = b'{"ref": "refs/heads/main"}'
DIGEST = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Hub-Signature-256": f"sha256={DIGEST}"}, True),
        ({"X-Hub-Signature-256": f"sha256={'0' * 64}"}, False),
        ({"X-Hub-Signature-256": DIGEST}, False),
        ({"X-Gitea-Signature": DIGEST}, True),
        ({"X-Forgejo-Signature": DIGEST}, True),
        ({"X-Gitea-Signature": "nope"}, False),
        ({"X-Gitlab-Token": "s3cret"}, True),
        ({"X-Gitlab-Token": "s3cre"}, False),
        ({"X-Signature-256": f"sha256={DIGEST}"}, True),
        ({}, False),
    ],
)
def test_signatures(headers, expected):
    """GitHub, Gitea/Forgejo, GitLab and generic signatures; anything else is not authentic."""
    assert authentic(headers, BODY, SECRET) is expected


def test_the_endpoint():
    """401 without or with a wrong signature, 413 over the size limit, 404 for an unknown app, 202 to wake."""
    woken: list[tuple[str, str]] = []

    async def secret_for(namespace: str, name: str) -> bytes | None:
        return SECRET if name in {"web", "gone"} else None

    def wake(namespace: str, name: str) -> bool:
        if name == "gone":
            return False
        woken.append((namespace, name))
        return True

    async def scenario() -> list[int]:
        client = TestClient(TestServer(make_app(secret_for=secret_for, wake=wake)))
        await client.start_server()
        try:
            statuses = []
            signed = {"X-Hub-Signature-256": f"sha256={DIGEST}"}
            for path, body, headers in [
                ("/hooks/team-a/web", BODY, {}),
                ("/hooks/team-a/web", BODY, {"X-Hub-Signature-256": "sha256=" + "1" * 64}),
                ("/hooks/team-a/other", BODY, signed),
                ("/hooks/team-a/web", b"x" * (MAX_BODY + 1), signed),
                ("/hooks/team-a/gone", BODY, signed),
                ("/hooks/team-a/web", BODY, signed),
            ]:
                response = await client.post(path, data=body, headers=headers)
                statuses.append(response.status)
            metrics = await client.get("/metrics")
            assert "gitward_webhook_requests_total" in await metrics.text()
            return statuses
        finally:
            await client.close()

    assert asyncio.run(scenario()) == [401, 401, 401, 413, 404, 202]
    assert woken == [("team-a", "web")]


# --- hostile input: routes, lookups, rate limits, replays, body size -------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    """A fake ``secret_for`` that counts its calls, optionally held until released."""

    def __init__(self, secret: bytes | None = SECRET, *, held: bool = False) -> None:
        self.secret = secret
        self.calls: list[tuple[str, str]] = []
        self.running = 0
        self.most_running = 0
        self.error: Exception | None = None
        self.release = asyncio.Event()
        self.called = asyncio.Condition()
        if not held:
            self.release.set()

    async def until_called(self, times: int) -> None:
        async with self.called:
            await asyncio.wait_for(self.called.wait_for(lambda: len(self.calls) >= times), 5)

    async def __call__(self, namespace: str, name: str) -> bytes | None:
        self.calls.append((namespace, name))
        async with self.called:
            self.called.notify_all()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        if self.error is not None:
            raise self.error
        return self.secret


class Woken(list):
    def __call__(self, namespace: str, name: str) -> bool:
        self.append((namespace, name))
        return True


def signed(body: bytes = BODY, **extra: str) -> dict[str, str]:
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest(), **extra}


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("gitward_webhook_requests_total", {"result": result}) or 0.0


class Served:
    """The app on a test server; ``post`` sends the path exactly as written (no client normalization)."""

    def __init__(self, app) -> None:
        self.client = TestClient(TestServer(app))

    async def __aenter__(self) -> Self:
        await self.client.start_server()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.close()

    async def post(self, path: str, body=BODY, headers=None) -> tuple[int, str, dict[str, str]]:
        root = str(self.client.make_url("/")).rstrip("/")
        async with self.client.session.post(
            URL(root + path, encoded=True), data=body, headers=headers or {}
        ) as response:
            return response.status, await response.text(), dict(response.headers)


class Arrivals:
    """A ``serves`` probe: counts requests that got past route checks (nothing awaits between that and the lookup)."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Condition()

    def __call__(self, *_route: str) -> bool:
        self.count += 1
        asyncio.get_running_loop().create_task(self._notify())
        return True

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.count >= count), 5)


def hook_app(lookups: Lookups, woken: Woken | None = None, **options):
    return make_app(secret_for=lookups, wake=woken if woken is not None else Woken(), **options)


@pytest.mark.parametrize(
    "path",
    [
        "/hooks/Team-A/web",
        "/hooks/team_a/web",
        "/hooks/-team/web",
        "/hooks/team-a./web",
        "/hooks/a.b/web",  # a namespace is a label: no dots
        "/hooks/a%2Fb/web",
        "/hooks/team-a/a%2Fb",
        "/hooks/%2e%2e/web",
        "/hooks/team-a/%2E%2E",
        "/hooks/team-a/..%2F..%2Fsecrets",
        "/hooks/team-a/web%3Fwatch=true",
        "/hooks/team-a/web%23frag",
        "/hooks/team-a/web%00",
        "/hooks/team-a/web%20",
        "/hooks/%C3%A9/web",
        "/hooks/team-a/w%C3%A9b",
        "/hooks/team-a/web.",
        "/hooks/team-a/.web",
        "/hooks/team-a/a..b",
        "/hooks/team-a/%25",
        "/hooks/" + "a" * 64 + "/web",
        "/hooks/team-a/" + "a" * 254,
    ],
)
def test_invalid_route_is_404_without_any_lookup(path):
    """A namespace that is not a DNS-1123 label or a name that is not a DNS-1123 subdomain is 404, and nothing is looked up."""
    lookups, woken = Lookups(), Woken()

    async def scenario():
        async with Served(hook_app(lookups, woken)) as served:
            return await served.post(path, headers=signed())

    before = counted("invalid-route")
    status, _, _ = asyncio.run(scenario())
    assert status == 404
    assert lookups.calls == []
    assert woken == []
    assert counted("invalid-route") == before + 1


def test_longest_valid_names_are_looked_up():
    """The boundaries are valid: a 63-character namespace and a 253-character dotted name reach the lookup."""
    lookups = Lookups()
    namespace = "a" * 63
    name = ".".join(["b" * 63] * 3) + "." + "c" * 61
    assert len(name) == 253

    async def scenario():
        async with Served(hook_app(lookups)) as served:
            return (await served.post(f"/hooks/{namespace}/{name}", headers=signed()))[0]

    assert asyncio.run(scenario()) == 202
    assert lookups.calls == [(namespace, name)]


def test_unauthenticated_flood_costs_one_lookup():
    """100 unauthenticated requests to one route cost one secret lookup: the secret is cached."""
    lookups = Lookups()

    async def scenario():
        async with Served(hook_app(lookups, burst=1000)) as served:
            return [(await served.post("/hooks/team-a/web"))[0] for _ in range(100)]

    assert asyncio.run(scenario()) == [401] * 100
    assert lookups.calls == [("team-a", "web")]


def test_default_limits_bound_a_flood_too():
    """With the default limits 100 unauthenticated requests cost at most one lookup, and most are 429."""
    lookups = Lookups()

    async def scenario():
        async with Served(hook_app(lookups)) as served:
            return [(await served.post("/hooks/team-a/web"))[0] for _ in range(100)]

    statuses = asyncio.run(scenario())
    assert len(lookups.calls) <= 1
    assert set(statuses) <= {401, 429}
    assert statuses.count(429) >= 89


def test_absent_secret_is_cached_until_the_ttl():
    """No secret is cached like a secret: one lookup per TTL, the body never read, 401 every time."""
    lookups, clock = Lookups(secret=None), FakeClock()

    async def scenario():
        async with Served(hook_app(lookups, clock=clock, burst=1000, secret_ttl=30)) as served:
            statuses = [(await served.post("/hooks/team-a/web", headers=signed()))[0] for _ in range(20)]
            clock.now += 29
            statuses.append((await served.post("/hooks/team-a/web", headers=signed()))[0])
            assert len(lookups.calls) == 1
            clock.now += 2
            lookups.secret = SECRET
            statuses.append((await served.post("/hooks/team-a/web", headers=signed()))[0])
            return statuses

    assert asyncio.run(scenario()) == [401] * 21 + [202]
    assert len(lookups.calls) == 2


def test_concurrent_requests_share_one_lookup():
    """Requests for one route while its lookup runs wait for that lookup instead of starting their own."""
    lookups = Lookups(held=True)

    async def scenario():
        arrivals = Arrivals()
        async with Served(hook_app(lookups, burst=1000, serves=arrivals)) as served:
            pending = [asyncio.create_task(served.post("/hooks/team-a/web")) for _ in range(20)]
            await arrivals.until(20)  # all 20 are at the lookup: without single flight each would start one
            lookups.release.set()
            return [status for status, _, _ in await asyncio.gather(*pending)]

    assert asyncio.run(scenario()) == [401] * 20
    assert lookups.calls == [("team-a", "web")]


def test_lookups_run_at_most_max_lookups_at_once():
    """Lookups of distinct routes never run more than ``max_lookups`` at once (each holds a thread)."""
    lookups = Lookups(held=True)

    async def scenario():
        arrivals = Arrivals()
        async with Served(hook_app(lookups, max_lookups=2, serves=arrivals)) as served:
            pending = [asyncio.create_task(served.post(f"/hooks/team-a/app-{i}")) for i in range(8)]
            await arrivals.until(8)  # all 8 are at the semaphore
            await lookups.until_called(2)
            assert len(lookups.calls) == 2
            lookups.release.set()
            return [status for status, _, _ in await asyncio.gather(*pending)]

    assert asyncio.run(scenario()) == [401] * 8
    assert len(lookups.calls) == 8
    assert lookups.most_running == 2


def test_lookup_backlog_is_bounded():
    """Past ``lookup_backlog`` pending lookups a request for another route is 503 at once, with no lookup."""
    lookups = Lookups(held=True)

    async def scenario():
        arrivals = Arrivals()
        async with Served(hook_app(lookups, max_lookups=1, lookup_backlog=2, serves=arrivals)) as served:
            pending = [asyncio.create_task(served.post(f"/hooks/team-a/app-{i}")) for i in range(2)]
            await arrivals.until(2)  # both are pending lookups
            await lookups.until_called(1)
            status, _, headers = await served.post("/hooks/team-a/third")
            lookups.release.set()
            await asyncio.gather(*pending)
            return status, headers

    before = counted("unavailable")
    status, headers = asyncio.run(scenario())
    assert status == 503
    assert headers["Retry-After"].isdigit()
    assert ("team-a", "third") not in lookups.calls
    assert counted("unavailable") == before + 1


def test_slow_lookup_is_503_and_its_answer_is_still_cached():
    """A request gives up on a slow lookup after ``lookup_timeout`` (503); the lookup finishes and is cached."""
    lookups = Lookups(held=True)

    async def scenario():
        async with Served(hook_app(lookups, lookup_timeout=0.05)) as served:
            first = (await served.post("/hooks/team-a/web", headers=signed()))[0]
            lookups.release.set()
            # Still in flight or already cached: either way the second request costs no new lookup.
            second = (await served.post("/hooks/team-a/web", headers=signed()))[0]
            return first, second

    assert asyncio.run(scenario()) == (503, 202)
    assert len(lookups.calls) == 1


def test_failed_lookup_is_503_and_not_cached():
    """A lookup that raises is 503 (never 500) and is tried again on the next request."""
    lookups = Lookups()
    lookups.error = RuntimeError("API server unreachable")

    async def scenario():
        async with Served(hook_app(lookups)) as served:
            first = (await served.post("/hooks/team-a/web", headers=signed()))[0]
            lookups.error = None
            second = (await served.post("/hooks/team-a/web", headers=signed()))[0]
            return first, second

    before = counted("lookup-failed")
    assert asyncio.run(scenario()) == (503, 202)
    assert len(lookups.calls) == 2
    assert counted("lookup-failed") == before + 1


def test_rate_limit_is_429_then_recovers_as_the_clock_advances():
    """Past the burst a route gets 429 with Retry-After (counted as rate-limited); it refills with time; other routes are unaffected."""
    lookups, clock = Lookups(secret=None), FakeClock()

    async def scenario():
        async with Served(hook_app(lookups, clock=clock, burst=3, refill_per_second=1)) as served:
            answers = [await served.post("/hooks/team-a/web") for _ in range(4)]
            other = (await served.post("/hooks/team-a/other"))[0]
            clock.now += 1
            refilled = [(await served.post("/hooks/team-a/web"))[0] for _ in range(2)]
            clock.now += 60
            recovered = [(await served.post("/hooks/team-a/web"))[0] for _ in range(3)]
            return answers, other, refilled, recovered

    before = counted("rate-limited")
    answers, other, refilled, recovered = asyncio.run(scenario())
    assert [status for status, _, _ in answers] == [401, 401, 401, 429]
    assert answers[3][2]["Retry-After"] == "1"
    assert other == 401
    assert refilled == [401, 429]
    assert recovered == [401, 401, 401]
    assert counted("rate-limited") == before + 2


@pytest.mark.parametrize(
    "header",
    ["X-GitHub-Delivery", "X-Gitea-Delivery", "X-Forgejo-Delivery", "X-Gitlab-Event-UUID", "X-Delivery-Id"],
)
def test_duplicate_delivery_is_acknowledged_without_waking(header):
    """A delivery ID seen before for the route is 200 "duplicate delivery ignored" and does not wake; a new ID wakes again."""
    lookups, woken = Lookups(), Woken()

    async def scenario():
        async with Served(hook_app(lookups, woken)) as served:
            first = await served.post("/hooks/team-a/web", headers=signed(**{header: "d-1"}))
            again = await served.post("/hooks/team-a/web", headers=signed(**{header: "d-1"}))
            other = await served.post("/hooks/team-a/web", headers=signed(**{header: "d-2"}))
            return first[0], again[:2], other[0]

    before = counted("duplicate")
    first, again, other = asyncio.run(scenario())
    assert first == 202
    assert again == (200, "duplicate delivery ignored\n")
    assert other == 202
    assert woken == [("team-a", "web"), ("team-a", "web")]
    assert counted("duplicate") == before + 1


def test_delivery_ids_are_per_route_and_expire():
    """The same delivery ID on another route is not a duplicate, and after the window it is new again."""
    lookups, woken, clock = Lookups(), Woken(), FakeClock()
    header = {"X-GitHub-Delivery": "d-1"}

    async def scenario():
        async with Served(hook_app(lookups, woken, clock=clock, replay_window=600)) as served:
            statuses = [(await served.post("/hooks/team-a/web", headers=signed(**header)))[0]]
            statuses.append((await served.post("/hooks/team-a/api", headers=signed(**header)))[0])
            clock.now += 599
            statuses.append((await served.post("/hooks/team-a/web", headers=signed(**header)))[0])
            clock.now += 2
            statuses.append((await served.post("/hooks/team-a/web", headers=signed(**header)))[0])
            return statuses

    assert asyncio.run(scenario()) == [202, 202, 200, 202]
    assert woken == [("team-a", "web"), ("team-a", "api"), ("team-a", "web")]


def test_without_a_delivery_id_the_body_digest_identifies_the_delivery():
    """Without a delivery ID the same signed body again is a duplicate; another body wakes."""
    lookups, woken = Lookups(), Woken()
    other_body = b'{"ref": "refs/heads/next"}'

    async def scenario():
        async with Served(hook_app(lookups, woken)) as served:
            return [
                (await served.post("/hooks/team-a/web", body, signed(body)))[0]
                for body in (BODY, BODY, other_body)
            ]

    assert asyncio.run(scenario()) == [202, 200, 202]
    assert len(woken) == 2


def test_unauthenticated_replay_state_is_untouched():
    """A delivery ID sent without a valid signature is not remembered: the signed delivery still wakes."""
    lookups, woken = Lookups(), Woken()
    header = {"X-GitHub-Delivery": "d-1"}

    async def scenario():
        async with Served(hook_app(lookups, woken)) as served:
            forged = (await served.post("/hooks/team-a/web", headers={**header, "X-Hub-Signature-256": "x"}))[
                0
            ]
            real = (await served.post("/hooks/team-a/web", headers=signed(**header)))[0]
            return forged, real

    assert asyncio.run(scenario()) == (401, 202)
    assert woken == [("team-a", "web")]


def test_delivery_to_an_app_not_running_is_not_remembered():
    """A delivery answered 404 (no such app here) wakes the app when it comes again after the app appears."""
    lookups = Lookups()
    running: list[bool] = [False]
    woken: list[tuple[str, str]] = []

    def wake(namespace: str, name: str) -> bool:
        if running[0]:
            woken.append((namespace, name))
        return running[0]

    async def scenario():
        async with Served(make_app(secret_for=lookups, wake=wake)) as served:
            first = (await served.post("/hooks/team-a/web", headers=signed(**{"X-GitHub-Delivery": "d"})))[0]
            running[0] = True
            second = (await served.post("/hooks/team-a/web", headers=signed(**{"X-GitHub-Delivery": "d"})))[0]
            return first, second

    assert asyncio.run(scenario()) == (404, 202)
    assert woken == [("team-a", "web")]


async def _chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        chunk = min(size, total - sent)
        sent += chunk
        yield b"x" * chunk


def test_body_over_the_limit_is_413():
    """Over 1 MiB is 413: declared in Content-Length (before any lookup) or streamed without one."""
    lookups = Lookups()

    async def scenario():
        async with Served(hook_app(lookups)) as served:
            declared = (await served.post("/hooks/team-a/web", b"x" * (MAX_BODY + 1), signed()))[0]
            assert lookups.calls == []
            streamed = (await served.post("/hooks/team-a/web", _chunks(MAX_BODY + 1), signed()))[0]
            return declared, streamed

    before = counted("too-large")
    assert asyncio.run(scenario()) == (413, 413)
    assert counted("too-large") == before + 2


def test_a_body_of_exactly_the_limit_is_read_whole():
    """A signed body of exactly 1 MiB, streamed in chunks, is read whole and authenticates."""
    body = b"x" * MAX_BODY
    woken = Woken()

    async def scenario():
        async with Served(hook_app(Lookups(), woken)) as served:
            return (await served.post("/hooks/team-a/web", _chunks(MAX_BODY), signed(body)))[0]

    assert asyncio.run(scenario()) == 202
    assert woken == [("team-a", "web")]


def test_undecodable_signature_bytes_are_401_not_500():
    """A signature header that is not UTF-8 is compared as bytes and refused (401), never a server error."""
    lookups = Lookups()

    async def scenario():
        async with Served(hook_app(lookups)) as served:
            server = served.client.server
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(
                b"POST /hooks/team-a/web HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"X-Hub-Signature-256: sha256=\xff\xfe\x80\r\nConnection: close\r\n\r\n{}"
            )
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            return int(status_line.split()[1])

    assert asyncio.run(scenario()) == 401
    assert lookups.calls == [("team-a", "web")]


def test_authentic_refuses_an_empty_secret():
    """An empty secret authenticates nothing, not even an empty token."""
    assert authentic({"X-Gitlab-Token": ""}, BODY, b"") is False


@pytest.mark.parametrize(
    "options", [{"burst": 0}, {"refill_per_second": 0}, {"max_lookups": 0}, {"cache_size": -1}]
)
def test_limits_must_be_positive(options):
    """Limits that would refuse everything or never refill are refused when the app is made."""
    with pytest.raises(ValueError, match="positive"):
        hook_app(Lookups(), **options)


def test_health_and_metrics_stay_served():
    """/healthz answers ok and /metrics lists the webhook counter."""

    async def scenario():
        async with Served(hook_app(Lookups())) as served:
            health = await served.client.get("/healthz")
            exposition = await served.client.get("/metrics")
            return health.status, await health.text(), await exposition.text()

    status, text, exposition = asyncio.run(scenario())
    assert (status, text) == (200, "ok\n")
    assert "gitward_webhook_requests_total" in exposition


def test_an_app_not_running_here_costs_nothing_and_is_reachable_once_it_starts():
    """A route the operator does not serve is 404 with no lookup and nothing cached; once it runs, it is served."""
    lookups, woken = Lookups(), Woken()
    running: set[tuple[str, str]] = set()
    app = make_app(secret_for=lookups, wake=woken, serves=lambda ns, n: (ns, n) in running)

    async def scenario():
        async with Served(app) as served:
            before = [(await served.post("/hooks/team-a/web", headers=signed()))[0] for _ in range(20)]
            running.add(("team-a", "web"))
            after = (await served.post("/hooks/team-a/web", headers=signed()))[0]
            return before, after

    before, after = asyncio.run(scenario())
    assert before == [404] * 20
    assert after == 202
    assert lookups.calls == [("team-a", "web")]
    assert woken == [("team-a", "web")]


def test_metrics_answer_only_an_allowed_bearer_token_when_access_is_checked():
    """With metrics_access, /metrics is 401 without a token or with a refused one, 200 with an allowed one."""
    seen: list[str] = []

    async def access(token: str) -> bool:
        seen.append(token)
        return token == "good"

    app = make_app(secret_for=Lookups(), wake=Woken(), metrics_access=access)
    attempts = [
        {},
        {"Authorization": "Bearer bad"},
        {"Authorization": "Basic good"},
        {"Authorization": "Bearer good"},
    ]

    async def scenario():
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            return [(await client.get("/metrics", headers=headers)).status for headers in attempts]
        finally:
            await client.close()

    assert asyncio.run(scenario()) == [401, 401, 401, 200]
    assert seen == ["bad", "good"]
