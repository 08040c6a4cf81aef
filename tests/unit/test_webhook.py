"""The push webhook: one route per repository, opaque tokens, signatures per provider, never trusting content."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.parse
from typing import Self

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from yarl import URL

from gitward.source.urls import parse
from gitward.webhook import (
    MAX_BODY,
    Route,
    Routes,
    _TokenBuckets,
    authentic,
    make_app,
    pushed_ref,
    route_path,
    route_token,
)

SECRET = b"s3cret"
OTHER_SECRET = b"an0ther"
REPO = "https://git.example.com/team/app.git"
OTHER_REPO = "https://git.example.com/team/other.git"
BODY = b'{"ref": "refs/heads/main"}'
DIGEST = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
TOKEN = route_token(SECRET, REPO)


def payload(ref: str | None, **more: object) -> bytes:
    return json.dumps({**({"ref": ref} if ref is not None else {}), **more}).encode()


# --- signatures -------------------------------------------------------------------------------------


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


def test_authentic_refuses_an_empty_secret():
    """An empty secret authenticates nothing, not even an empty token."""
    assert authentic({"X-Gitlab-Token": ""}, BODY, b"") is False


# --- the route token --------------------------------------------------------------------------------


def test_the_token_is_64_lowercase_hex_and_stable():
    """A token is 64 lowercase hex characters, the same every time for the same secret and repository."""
    assert len(TOKEN) == 64
    assert set(TOKEN) <= set("0123456789abcdef")
    assert route_token(SECRET, REPO) == TOKEN
    assert route_path(TOKEN) == f"/hook/{TOKEN}"


def test_the_token_differs_per_secret_and_per_repository():
    """Another secret or another repository is another route."""
    tokens = {
        route_token(SECRET, REPO),
        route_token(OTHER_SECRET, REPO),
        route_token(SECRET, OTHER_REPO),
        route_token(OTHER_SECRET, OTHER_REPO),
    }
    assert len(tokens) == 4


def test_the_token_depends_on_neither_namespace_name_nor_branch():
    """Apps in different namespaces, with different names and branches, reading one repository with one secret share one token."""
    routes = Routes()
    tokens = {
        routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="main"),
        routes.register(("team-a", "api"), secret=SECRET, repository=REPO, branch="staging"),
        routes.register(("team-b", "web"), secret=SECRET, repository=REPO, branch="main"),
    }
    assert tokens == {TOKEN}
    assert len(routes) == 1


def test_the_token_is_by_repository_identity():
    """Spellings of one repository (user, default port, host case) give one token; the identity is RepoURL's."""
    spellings = [
        "https://git.example.com/team/app.git",
        "https://GIT.example.com:443/team/app.git",
        "ssh://git@git.example.com/team/app.git",
        "git@git.example.com:team/app.git",
        "ssh://git.example.com:22/team/app.git",
    ]
    identities = [parse(url).identity for url in spellings]
    assert len({route_token(SECRET, identities[0]), route_token(SECRET, identities[1])}) == 1
    assert len({route_token(SECRET, identity) for identity in identities[2:]}) == 1


def test_the_token_is_not_a_signature_under_the_secret():
    """The token is shown in status: it must not sign any body an attacker could post with it."""
    for body in (
        REPO.encode(),
        b"repository\x00" + REPO.encode(),
        b"gitward.dev/webhook-route-key/v1",
        b"",
    ):
        assert authentic({"X-Hub-Signature-256": f"sha256={TOKEN}"}, body, SECRET) is False
        assert authentic({"X-Gitea-Signature": TOKEN}, body, SECRET) is False
    assert TOKEN != hmac.new(SECRET, REPO.encode(), hashlib.sha256).hexdigest()


# --- the route table --------------------------------------------------------------------------------


def test_register_lookup_and_forget():
    """A registered app is on its token's route with its branch; forgetting the last app removes the route."""
    routes = Routes()
    token = routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="main")
    route = routes.lookup(token)
    assert isinstance(route, Route)
    assert route.secret == SECRET
    assert dict(route.apps) == {("team-a", "web"): "main"}
    assert routes.token_of(("team-a", "web")) == token
    routes.forget(("team-a", "web"))
    assert routes.lookup(token) is None
    assert routes.token_of(("team-a", "web")) is None
    assert len(routes) == 0
    routes.forget(("team-a", "web"))  # forgetting twice is nothing


def test_re_registering_moves_an_app_to_its_new_route():
    """A new secret or URL moves the app: off the old route (gone when empty), onto the new one."""
    routes = Routes()
    old = routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="main")
    routes.register(("team-a", "api"), secret=SECRET, repository=REPO, branch="main")
    rotated = routes.register(("team-a", "web"), secret=OTHER_SECRET, repository=REPO, branch="main")
    assert rotated != old
    assert dict(routes.lookup(old).apps) == {("team-a", "api"): "main"}
    assert dict(routes.lookup(rotated).apps) == {("team-a", "web"): "main"}
    moved = routes.register(("team-a", "api"), secret=SECRET, repository=OTHER_REPO, branch="dev")
    assert routes.lookup(old) is None
    assert dict(routes.lookup(moved).apps) == {("team-a", "api"): "dev"}
    assert len(routes) == 2


def test_re_registering_the_same_app_changes_only_its_branch():
    """Registering again on the same route updates the branch; the table stays one entry per app."""
    routes = Routes()
    token = routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="main")
    assert routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="next") == token
    assert dict(routes.lookup(token).apps) == {("team-a", "web"): "next"}
    assert len(routes) == 1


def test_the_table_is_bounded_by_the_apps():
    """Routes never outnumber apps: a thousand apps moved around leave one route each, then none."""
    routes = Routes()
    apps = [("team-a", f"app-{i}") for i in range(1000)]
    for round_ in range(3):
        for app in apps:
            routes.register(
                app, secret=f"secret-{round_}".encode(), repository=f"{REPO}/{app[1]}", branch="main"
            )
    assert len(routes) == 1000
    for app in apps:
        routes.forget(app)
    assert len(routes) == 0


def test_an_empty_secret_gets_no_route():
    """A route needs a secret: an empty one authenticates nothing, so it is refused."""
    with pytest.raises(ValueError, match="secret"):
        Routes().register(("team-a", "web"), secret=b"", repository=REPO, branch="main")


def test_a_route_never_shows_its_secret():
    """The route's repr names its token's start and its size, never the secret."""
    routes = Routes()
    routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="main")
    assert "s3cret" not in repr(routes.lookup(TOKEN))


# --- the payload routes, nothing more ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "ref"),
    [
        (payload("refs/heads/main"), "application/json", "refs/heads/main"),
        (payload("refs/tags/v1"), "application/json", "refs/tags/v1"),
        (payload("refs/heads/main", commits=[{"id": "x" * 40}] * 100), "application/json", "refs/heads/main"),
        (
            b"payload=" + urllib.parse.quote(payload("refs/heads/dev")).encode(),
            "application/x-www-form-urlencoded",
            "refs/heads/dev",
        ),
        (b"payload=%7B%7D&payload=%7B%7D", "application/x-www-form-urlencoded", None),
        (b"a=b", "application/x-www-form-urlencoded", None),
        (b"\x00=&&&=", "application/x-www-form-urlencoded", None),
        (payload(None, after="abc"), "application/json", None),
        (b'{"ref": 7}', "application/json", None),
        (b'{"repository": {"ref": "refs/heads/main"}}', "application/json", None),
        (b'["refs/heads/main"]', "application/json", None),
        (b'"refs/heads/main"', "application/json", None),
        (b"", "application/json", None),
        (b"not json", "application/json", None),
        (b"\xff\xfe{}", "application/json", None),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", None),
        (b'{"ref": "refs/heads/main", "n": ' + b"9" * 5000 + b"}", "application/json", None),
        (b'{"ref": "refs/heads/main", "ref": "refs/heads/dev"}', "application/json", "refs/heads/dev"),
    ],
)
def test_pushed_ref_reads_only_the_top_level_ref_and_never_raises(body, content_type, ref):
    """The top-level ``ref`` of JSON (or of GitHub's form-encoded JSON); anything else is None, never an error."""
    assert pushed_ref(body, content_type) == ref


def test_a_route_wakes_by_branch():
    """A branch wakes its followers, a tag nobody, and a ref that cannot be read (or is another kind) everybody."""
    routes = Routes()
    for app, branch in [(("a", "web"), "main"), (("a", "api"), "main"), (("b", "stage"), "staging")]:
        routes.register(app, secret=SECRET, repository=REPO, branch=branch)
    route = routes.lookup(TOKEN)
    everyone = (("a", "web"), ("a", "api"), ("b", "stage"))
    assert route.apps_for("refs/heads/main") == (("a", "web"), ("a", "api"))
    assert route.apps_for("refs/heads/staging") == (("b", "stage"),)
    assert route.apps_for("refs/heads/other") == ()
    assert route.apps_for("refs/tags/v1.0") == ()
    assert route.apps_for(None) == everyone
    assert route.apps_for("refs/heads/") == everyone
    assert route.apps_for("main") == everyone
    assert route.apps_for("refs/pull/1/head") == everyone


# --- the endpoint -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Woken(list):
    """A ``wake`` that records each app; apps in ``absent`` are not running here."""

    def __init__(self, absent: set[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.absent = absent if absent is not None else set()

    def __call__(self, namespace: str, name: str) -> bool:
        if (namespace, name) in self.absent:
            return False
        self.append((namespace, name))
        return True


def signed(body: bytes = BODY, secret: bytes = SECRET, **extra: str) -> dict[str, str]:
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(), **extra}


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("gitward_webhook_requests_total", {"result": result}) or 0.0


def table(*apps: tuple[str, str, str], secret: bytes = SECRET, repository: str = REPO) -> Routes:
    """A route table with each (namespace, name, branch) on one repository."""
    routes = Routes()
    for namespace, name, branch in apps:
        routes.register((namespace, name), secret=secret, repository=repository, branch=branch)
    return routes


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


def hook_app(routes: Routes, woken: Woken | None = None, **options):
    return make_app(routes=routes, wake=woken if woken is not None else Woken(), **options)


HOOK = f"/hook/{TOKEN}"


def test_the_endpoint():
    """401 unsigned or mis-signed, 404 for an unknown route, 413 over the size limit, 202 to wake."""
    woken = Woken()
    unknown = route_token(SECRET, OTHER_REPO)

    async def scenario() -> list[int]:
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            statuses = []
            for path, body, headers in [
                (HOOK, BODY, {}),
                (HOOK, BODY, {"X-Hub-Signature-256": "sha256=" + "1" * 64}),
                (f"/hook/{unknown}", BODY, signed()),
                (HOOK, b"x" * (MAX_BODY + 1), signed()),
                (HOOK, BODY, signed()),
            ]:
                statuses.append((await served.post(path, body, headers))[0])
            return statuses

    assert asyncio.run(scenario()) == [401, 401, 404, 413, 202]
    assert woken == [("team-a", "web")]


def test_one_push_wakes_every_app_of_the_repository_on_that_branch_only():
    """Apps of one repository on different branches (and namespaces) are woken selectively, by the pushed branch."""
    woken = Woken()
    routes = table(("team-a", "web", "main"), ("team-a", "api", "main"), ("team-b", "stage", "staging"))
    routes.register(("team-a", "elsewhere"), secret=SECRET, repository=OTHER_REPO, branch="main")

    async def scenario():
        async with Served(hook_app(routes, woken)) as served:
            main = await served.post(HOOK, payload("refs/heads/main"), signed(payload("refs/heads/main")))
            staged = await served.post(
                HOOK, payload("refs/heads/staging"), signed(payload("refs/heads/staging"))
            )
            return main[:2], staged[:2]

    main, staged = asyncio.run(scenario())
    assert main == (202, "accepted: 2 app(s) woken\n")
    assert staged == (202, "accepted: 1 app(s) woken\n")
    assert woken == [("team-a", "web"), ("team-a", "api"), ("team-b", "stage")]


def test_a_tag_push_wakes_nothing():
    """A push of refs/tags/... is authentic (202) and wakes no app."""
    woken = Woken()
    body = payload("refs/tags/v1.2.3")

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            return (await served.post(HOOK, body, signed(body)))[:2]

    assert asyncio.run(scenario()) == (202, "accepted: a tag push wakes no app\n")
    assert woken == []


def test_a_branch_nobody_follows_is_still_202_and_says_so():
    """An authentic push to a branch no app on the route follows is 202, and the answer says nothing was woken."""
    woken = Woken()
    body = payload("refs/heads/feature")

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            return (await served.post(HOOK, body, signed(body)))[:2]

    before = counted("accepted")
    status, text = asyncio.run(scenario())
    assert status == 202
    assert "no app on this route follows the pushed branch" in text
    assert "0 app(s) woken" in text
    assert woken == []
    assert counted("accepted") == before + 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        payload(None, after="0" * 40),
        b'{"ref": ["refs/heads/main"]}',
        b"[" * 50_000 + b"]" * 50_000,
        b"",
    ],
)
def test_a_payload_that_names_no_branch_wakes_every_app_of_the_route(body):
    """Unparseable, not an object, no ref, a ref that is not a string, nested too deep: every app of the route wakes."""
    woken = Woken()
    routes = table(("team-a", "web", "main"), ("team-a", "api", "staging"))

    async def scenario():
        async with Served(hook_app(routes, woken)) as served:
            return (await served.post(HOOK, body, signed(body)))[:2]

    assert asyncio.run(scenario()) == (202, "accepted: 2 app(s) woken\n")
    assert sorted(woken) == [("team-a", "api"), ("team-a", "web")]


def test_github_form_encoded_payloads_route_too():
    """GitHub's default content type sends ``payload=<JSON>``: its ref routes the same way."""
    woken = Woken()
    routes = table(("team-a", "web", "main"), ("team-a", "api", "staging"))
    body = b"payload=" + urllib.parse.quote(payload("refs/heads/staging")).encode()
    headers = signed(body, **{"Content-Type": "application/x-www-form-urlencoded"})

    async def scenario():
        async with Served(hook_app(routes, woken)) as served:
            return (await served.post(HOOK, body, headers))[0]

    assert asyncio.run(scenario()) == 202
    assert woken == [("team-a", "api")]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Gitea-Signature": hmac.new(SECRET, BODY, hashlib.sha256).hexdigest(), "X-Gitea-Delivery": "g"},
        {"X-Forgejo-Signature": hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()},
        {"X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event-UUID": "u"},
        {"X-Signature-256": "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()},
    ],
    ids=["gitea", "forgejo", "gitlab", "generic"],
)
def test_every_provider_authenticates_on_the_route(headers):
    """Gitea, Forgejo, GitLab and the generic header authenticate against the route's secret like GitHub's."""
    woken = Woken()

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            return (await served.post(HOOK, BODY, headers))[0]

    assert asyncio.run(scenario()) == 202
    assert woken == [("team-a", "web")]


def test_a_forged_token_is_404_and_a_wrong_secret_401():
    """A token made with another secret names no route (404); the right token signed with another secret is 401."""
    woken = Woken()
    forged = route_token(b"guess", REPO)

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            return [
                (await served.post(f"/hook/{forged}", BODY, signed(secret=b"guess")))[0],
                (await served.post(HOOK, BODY, signed(secret=b"guess")))[0],
                (await served.post(HOOK, BODY, {"X-Gitlab-Token": "guess"}))[0],
            ]

    before = counted("unknown-route"), counted("unauthorized")
    assert asyncio.run(scenario()) == [404, 401, 401]
    assert woken == []
    assert (counted("unknown-route"), counted("unauthorized")) == (before[0] + 1, before[1] + 2)


def test_a_moved_app_is_reached_on_its_new_route_only():
    """After a secret rotation the old route is gone (404) and the new one wakes; an app left behind keeps the old."""
    woken = Woken()
    routes = table(("team-a", "web", "main"))

    async def scenario():
        async with Served(hook_app(routes, woken)) as served:
            first = (await served.post(HOOK, BODY, signed()))[0]
            new = routes.register(("team-a", "web"), secret=OTHER_SECRET, repository=REPO, branch="main")
            gone = (await served.post(HOOK, BODY, signed(**{"X-GitHub-Delivery": "2"})))[0]
            moved = (await served.post(f"/hook/{new}", BODY, signed(secret=OTHER_SECRET)))[0]
            routes.register(("team-a", "api"), secret=SECRET, repository=REPO, branch="main")
            back = (await served.post(HOOK, BODY, signed(**{"X-GitHub-Delivery": "3"})))[0]
            return first, gone, moved, back

    assert asyncio.run(scenario()) == (202, 404, 202, 202)
    assert woken == [("team-a", "web"), ("team-a", "web"), ("team-a", "api")]


def test_a_route_registered_later_is_reachable_at_once():
    """An unknown route costs nothing and is remembered nowhere: registered a moment later, it is served."""
    woken = Woken()
    routes = Routes()

    async def scenario():
        async with Served(hook_app(routes, woken)) as served:
            before = [(await served.post(HOOK, BODY, signed()))[0] for _ in range(20)]
            routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="main")
            after = (await served.post(HOOK, BODY, signed()))[0]
            return before, after

    before, after = asyncio.run(scenario())
    assert before == [404] * 20
    assert after == 202
    assert woken == [("team-a", "web")]


@pytest.mark.parametrize(
    "segment",
    [
        "",
        TOKEN.upper(),
        TOKEN[:-1],
        TOKEN + "0",
        TOKEN[:-1] + "g",
        TOKEN + "/",
        TOKEN + "/extra",
        "..%2F..%2Fapi%2Fv1%2Fsecrets",
        TOKEN[:32] + "%2F" + TOKEN[35:],
        "team-a/web",
        "%00" * 64,
        "%2e%2e",
        TOKEN + "%00",
        TOKEN + "%20",
        TOKEN[:-1] + "%C3%A9",
        "a" * 300,
    ],
)
def test_a_path_that_is_not_a_token_is_404_before_anything_else(segment):
    """Anything but 64 lowercase hex characters is 404 "invalid-route": not looked up, not limited, body not read."""
    woken = Woken()

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken, burst=1)) as served:
            return [
                (await served.post(f"/hook/{segment}", b"x" * (MAX_BODY + 1), signed()))[0] for _ in range(3)
            ]

    before = counted("invalid-route")
    assert asyncio.run(scenario()) == [404] * 3
    assert woken == []
    assert counted("invalid-route") == before + 3


def test_the_checks_run_in_order_each_before_what_the_next_costs():
    """Unknown route before the rate limit, the rate limit before the size, the size before the signature."""

    async def scenario():
        unknown = route_token(SECRET, OTHER_REPO)
        async with Served(hook_app(table(("team-a", "web", "main")), burst=2)) as served:
            return [
                (await served.post(f"/hook/{unknown}", b"x" * (MAX_BODY + 1)))[0],
                (await served.post(f"/hook/{unknown}", b"x" * (MAX_BODY + 1)))[0],
                (await served.post(f"/hook/{unknown}", b"x" * (MAX_BODY + 1)))[0],
                (await served.post(HOOK, b"x" * (MAX_BODY + 1)))[0],
                (await served.post(HOOK, BODY))[0],
                (await served.post(HOOK, b"x" * (MAX_BODY + 1), signed()))[0],
            ]

    assert asyncio.run(scenario()) == [404, 404, 404, 413, 401, 429]


def test_rate_limit_is_429_then_recovers_as_the_clock_advances():
    """Past the burst a route gets 429 with Retry-After; it refills with time; other routes are unaffected."""
    clock = FakeClock()
    routes = table(("team-a", "web", "main"))
    other = routes.register(("team-a", "other"), secret=SECRET, repository=OTHER_REPO, branch="main")

    async def scenario():
        async with Served(hook_app(routes, clock=clock, burst=3, refill_per_second=1)) as served:
            answers = [await served.post(HOOK) for _ in range(4)]
            elsewhere = (await served.post(f"/hook/{other}"))[0]
            clock.now += 1
            refilled = [(await served.post(HOOK))[0] for _ in range(2)]
            clock.now += 60
            recovered = [(await served.post(HOOK))[0] for _ in range(3)]
            return answers, elsewhere, refilled, recovered

    before = counted("rate-limited")
    answers, elsewhere, refilled, recovered = asyncio.run(scenario())
    assert [status for status, _, _ in answers] == [401, 401, 401, 429]
    assert answers[3][2]["Retry-After"] == "1"
    assert elsewhere == 401
    assert refilled == [401, 429]
    assert recovered == [401, 401, 401]
    assert counted("rate-limited") == before + 2


def test_default_limits_bound_a_flood():
    """With the default limits, 100 unauthenticated requests to a known route are mostly 429."""

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")))) as served:
            return [(await served.post(HOOK))[0] for _ in range(100)]

    statuses = asyncio.run(scenario())
    assert set(statuses) <= {401, 429}
    assert statuses.count(429) >= 89


def test_rate_limit_state_is_bounded_by_the_routes():
    """Buckets of routes that are gone, or that have refilled, are dropped: the state never outgrows the table."""
    clock = FakeClock()
    buckets = _TokenBuckets(burst=2, rate=1, clock=clock)
    alive = {f"r{i}" for i in range(10)}
    for key in sorted(alive):
        buckets.take(key)
    alive -= {"r0", "r1", "r2"}
    buckets.prune(alive.__contains__)
    assert len(buckets) == 7
    clock.now += 10
    buckets.prune(alive.__contains__)
    assert len(buckets) == 0


def test_rate_limit_buckets_of_removed_routes_go():
    """Routes registered, hit and forgotten by the thousand leave no rate-limit state behind."""
    routes = Routes()
    app = make_app(routes=routes, wake=Woken())

    async def scenario():
        async with Served(app) as served:
            for i in range(200):
                token = routes.register(
                    ("team-a", "web"), secret=f"s{i}".encode(), repository=REPO, branch="main"
                )
                assert (await served.post(f"/hook/{token}"))[0] == 401
            return len(routes)

    assert asyncio.run(scenario()) == 1
    buckets = next(  # the handler's closure holds the buckets
        cell.cell_contents
        for route in app.router.routes()
        for cell in (getattr(route.handler, "__closure__", None) or ())
        if isinstance(cell.cell_contents, _TokenBuckets)
    )
    assert len(buckets) <= 2


@pytest.mark.parametrize(
    "header",
    ["X-GitHub-Delivery", "X-Gitea-Delivery", "X-Forgejo-Delivery", "X-Gitlab-Event-UUID", "X-Delivery-Id"],
)
def test_duplicate_delivery_is_acknowledged_without_waking(header):
    """A delivery ID seen before for the route is 200 "duplicate delivery ignored" and does not wake; a new ID wakes again."""
    woken = Woken()

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            first = await served.post(HOOK, headers=signed(**{header: "d-1"}))
            again = await served.post(HOOK, headers=signed(**{header: "d-1"}))
            other = await served.post(HOOK, headers=signed(**{header: "d-2"}))
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
    woken, clock = Woken(), FakeClock()
    routes = table(("team-a", "web", "main"))
    other = routes.register(("team-a", "api"), secret=SECRET, repository=OTHER_REPO, branch="main")
    header = {"X-GitHub-Delivery": "d-1"}

    async def scenario():
        async with Served(hook_app(routes, woken, clock=clock, replay_window=600)) as served:
            statuses = [(await served.post(HOOK, headers=signed(**header)))[0]]
            statuses.append((await served.post(f"/hook/{other}", headers=signed(**header)))[0])
            clock.now += 599
            statuses.append((await served.post(HOOK, headers=signed(**header)))[0])
            clock.now += 2
            statuses.append((await served.post(HOOK, headers=signed(**header)))[0])
            return statuses

    assert asyncio.run(scenario()) == [202, 202, 200, 202]
    assert woken == [("team-a", "web"), ("team-a", "api"), ("team-a", "web")]


def test_without_a_delivery_id_the_body_digest_identifies_the_delivery():
    """Without a delivery ID the same signed body again is a duplicate; another body wakes."""
    woken = Woken()
    other_body = b'{"ref": "refs/heads/main", "after": "1"}'

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            return [(await served.post(HOOK, body, signed(body)))[0] for body in (BODY, BODY, other_body)]

    assert asyncio.run(scenario()) == [202, 200, 202]
    assert len(woken) == 2


def test_unauthenticated_replay_state_is_untouched():
    """A delivery ID sent without a valid signature is not remembered: the signed delivery still wakes."""
    woken = Woken()
    header = {"X-GitHub-Delivery": "d-1"}

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            forged = (await served.post(HOOK, headers={**header, "X-Hub-Signature-256": "x"}))[0]
            real = (await served.post(HOOK, headers=signed(**header)))[0]
            return forged, real

    assert asyncio.run(scenario()) == (401, 202)
    assert woken == [("team-a", "web")]


def test_a_delivery_some_app_missed_is_not_remembered():
    """If an app on the route was not running here, a redelivery of the same ID is not a duplicate: it wakes."""
    woken = Woken(absent={("team-a", "api")})
    routes = table(("team-a", "web", "main"), ("team-a", "api", "main"))
    header = {"X-GitHub-Delivery": "d"}

    async def scenario():
        async with Served(hook_app(routes, woken)) as served:
            first = (await served.post(HOOK, headers=signed(**header)))[:2]
            woken.absent.clear()
            second = (await served.post(HOOK, headers=signed(**header)))[:2]
            third = (await served.post(HOOK, headers=signed(**header)))[0]
            return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first == (202, "accepted: 1 app(s) woken (1 not running here)\n")
    assert second == (202, "accepted: 2 app(s) woken\n")
    assert third == 200


def test_a_wake_that_fails_costs_only_its_app():
    """A wake that raises is logged and counted as not woken; the others are woken and the answer is 202."""
    woken = Woken()

    def wake(namespace: str, name: str) -> bool:
        if name == "broken":
            raise RuntimeError("boom")
        return woken(namespace, name)

    routes = table(("team-a", "broken", "main"), ("team-a", "web", "main"))

    async def scenario():
        async with Served(make_app(routes=routes, wake=wake)) as served:
            return (await served.post(HOOK, headers=signed()))[:2]

    assert asyncio.run(scenario()) == (202, "accepted: 1 app(s) woken (1 not running here)\n")
    assert woken == [("team-a", "web")]


async def _chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        chunk = min(size, total - sent)
        sent += chunk
        yield b"x" * chunk


def test_body_over_the_limit_is_413():
    """Over 1 MiB is 413: declared in Content-Length, or streamed without one."""

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")))) as served:
            declared = (await served.post(HOOK, b"x" * (MAX_BODY + 1), signed()))[0]
            streamed = (await served.post(HOOK, _chunks(MAX_BODY + 1), signed()))[0]
            return declared, streamed

    before = counted("too-large")
    assert asyncio.run(scenario()) == (413, 413)
    assert counted("too-large") == before + 2


def test_a_body_of_exactly_the_limit_is_read_whole():
    """A signed body of exactly 1 MiB, streamed in chunks, is read whole and authenticates (and wakes everyone)."""
    body = b"x" * MAX_BODY
    woken = Woken()

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")), woken)) as served:
            return (await served.post(HOOK, _chunks(MAX_BODY), signed(body)))[0]

    assert asyncio.run(scenario()) == 202
    assert woken == [("team-a", "web")]


def test_undecodable_signature_bytes_are_401_not_500():
    """A signature header that is not UTF-8 is compared as bytes and refused (401), never a server error."""

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")))) as served:
            server = served.client.server
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(
                f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n".encode()
                + b"X-Hub-Signature-256: sha256=\xff\xfe\x80\r\nConnection: close\r\n\r\n{}"
            )
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            return int(status_line.split()[1])

    assert asyncio.run(scenario()) == 401


def test_answers_stay_well_under_100_ms_for_a_route_of_many_apps():
    """Authenticate, route and wake 50 apps, answered at once: p99 far below 100 ms (no I/O on the way)."""
    routes = table(*[("team-a", f"app-{i}", "main" if i % 2 else "dev") for i in range(50)])
    woken = Woken()
    bodies = [payload("refs/heads/main", after=f"{i:040x}", commits=[{"id": "x"}] * 50) for i in range(300)]

    async def scenario():
        async with Served(hook_app(routes, woken, burst=10_000)) as served:
            await served.post(HOOK)  # connection up
            times = []
            for body in bodies:
                started = time.perf_counter()
                status, _, _ = await served.post(HOOK, body, signed(body))
                times.append(time.perf_counter() - started)
                assert status == 202
            return sorted(times)

    times = asyncio.run(scenario())
    assert times[int(len(times) * 0.99)] < 0.1, times[-5:]
    assert len(woken) == 300 * 25


@pytest.mark.parametrize("options", [{"burst": 0}, {"refill_per_second": 0}, {"replay_size": 0}])
def test_limits_must_be_positive(options):
    """Limits that would refuse everything or never refill are refused when the app is made."""
    with pytest.raises(ValueError, match="positive"):
        hook_app(Routes(), **options)


def test_health_and_metrics_stay_served():
    """/healthz answers ok and /metrics lists the webhook counter; the old per-app route is gone."""

    async def scenario():
        async with Served(hook_app(table(("team-a", "web", "main")))) as served:
            health = await served.client.get("/healthz")
            exposition = await served.client.get("/metrics")
            old = (await served.post("/hooks/team-a/web", BODY, signed()))[0]
            return health.status, await health.text(), await exposition.text(), old

    status, text, exposition, old = asyncio.run(scenario())
    assert (status, text) == (200, "ok\n")
    assert "gitward_webhook_requests_total" in exposition
    assert old == 404


def test_metrics_answer_only_an_allowed_bearer_token_when_access_is_checked():
    """With metrics_access, /metrics is 401 without a token or with a refused one, 200 with an allowed one."""
    seen: list[str] = []

    async def access(token: str) -> bool:
        seen.append(token)
        return token == "good"

    app = make_app(routes=Routes(), wake=Woken(), metrics_access=access)
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
