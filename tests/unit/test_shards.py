"""Shards: a main instance (or a full set of hash shards) plus label shards own every app exactly once."""

from __future__ import annotations

import collections
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitward import cli
from gitward.shards import DEFAULT_LEASE, SHARD_LABEL, Shard, bucket, parse_hash, validate_key

KEYS = ["a", "b", "team-payments"]
NAME = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
LABEL = st.sampled_from([None, "", *KEYS])  # None: no shard label; "": an empty value counts as none


def labels_of(label: str | None) -> dict[str, str]:
    other = {"app.kubernetes.io/name": "web"}
    return other if label is None else {**other, SHARD_LABEL: label}


def owners(shards: list[Shard], namespace: str, name: str, label: str | None) -> list[Shard]:
    return [s for s in shards if s.owns(namespace, name, labels_of(label))]


@given(namespace=NAME, name=NAME, label=LABEL)
def test_a_main_instance_and_label_shards_partition_the_apps(namespace, name, label):
    """Main (no flag) + one shard per key: every app has exactly one owner, the one its label names."""
    shards = [Shard(), *(Shard(key=k) for k in KEYS)]
    found = owners(shards, namespace, name, label)
    assert len(found) == 1
    assert found[0].key == (label or None)


@given(namespace=NAME, name=NAME, label=LABEL, count=st.integers(min_value=1, max_value=12))
def test_hash_shards_and_label_shards_partition_the_apps(namespace, name, label, count):
    """Hash shards 0/N .. N-1/N replace the main instance; label shards keep their labelled apps."""
    shards = [*(Shard(index=i, count=count) for i in range(count)), *(Shard(key=k) for k in KEYS)]
    found = owners(shards, namespace, name, label)
    assert len(found) == 1
    if label:
        assert found[0].key == label
    else:
        assert found[0].index == bucket(namespace, name, count)


def test_an_app_labelled_for_a_shard_nobody_runs_is_owned_by_nobody():
    """As with Flux: the main instance leaves every labelled app to its shard, running or not."""
    assert owners([Shard(), Shard(key="a")], "ns", "web", "b") == []


def test_the_hash_is_stable_and_spreads_apps():
    """sha256("namespace/name") mod N: fixed values, and 3 shards each get a fair part of 3000 apps."""
    assert bucket("team-a", "web", 3) == int(hashlib.sha256(b"team-a/web").hexdigest(), 16) % 3 == 2
    assert (bucket("team-a", "api", 3), bucket("team-b", "web", 3)) == (2, 1)  # fixed: never re-sharded
    counts = collections.Counter(bucket(f"ns-{i % 7}", f"app-{i}", 3) for i in range(3000))
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 900
    assert Shard(index=1, count=3).owns("ns-1", "app-1", {}) == (bucket("ns-1", "app-1", 3) == 1)


def test_every_shard_has_its_own_lease():
    """One Lease name per shard: label keys, hash buckets and the main instance never share one."""
    names = [
        Shard().lease_name,
        Shard(index=0, count=1).lease_name,
        Shard(key="a").lease_name,
        Shard(index=0, count=2).lease_name,
        Shard(index=1, count=2).lease_name,
    ]
    assert names == [
        DEFAULT_LEASE, DEFAULT_LEASE, "gitward-shard-a", "gitward-shard-hash-0-of-2", "gitward-shard-hash-1-of-2"
    ]  # fmt: skip
    assert DEFAULT_LEASE == "gitward-shard-default"


def test_every_shard_has_its_own_finalizer():
    """kopf removes its finalizer from the objects none of its handlers match: one shared name would be fought over."""
    shards = [Shard(), Shard(key="a"), Shard(key="b"), Shard(index=0, count=2), Shard(index=1, count=2)]
    names = [s.finalizer for s in shards]
    assert names == [
        "gitward.dev/finalizer", "shard.gitward.dev/a", "shard.gitward.dev/b",
        "shard.gitward.dev/hash-0-of-2", "shard.gitward.dev/hash-1-of-2",
    ]  # fmt: skip
    qualified = re.compile(r"[a-z0-9.-]{1,253}/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
    for name in [*names, Shard(key="k" * 63).finalizer, Shard(index=1023, count=1024).finalizer]:
        assert qualified.fullmatch(name), name


@pytest.mark.parametrize(
    "key", ["", "A", "team_a", "-a", "a-", "a.b", "x" * 64, "default", "hash-0-of-2", "a b", "é"]
)
def test_invalid_or_reserved_keys_are_refused(key):
    """A key is a lowercase DNS label (it names a Lease, a Deployment, a Service), and not a reserved name."""
    with pytest.raises(ValueError, match="shard key"):
        validate_key(key)
    with pytest.raises(ValueError, match="shard key"):
        Shard(key=key)


@pytest.mark.parametrize("spec", ["", "1", "1/", "/3", "3/3", "4/3", "-1/3", "0/0", "a/b", "1.0/3", "0/1025"])
def test_invalid_hash_specs_are_refused(spec):
    """I/N needs whole numbers with 0 <= I < N <= 1024."""
    with pytest.raises(ValueError, match="hash shard"):
        parse_hash(spec)


def test_valid_specs_parse():
    assert validate_key("a") == "a"
    assert validate_key("team-payments-2") == "team-payments-2"
    assert parse_hash("2/3") == (2, 3)
    assert Shard.of(hash_spec="2/3") == Shard(index=2, count=3)
    assert Shard.of(key="a") == Shard(key="a")
    assert Shard.of() == Shard()
    with pytest.raises(ValueError, match="alternatives"):
        Shard.of(key="a", hash_spec="0/2")
    with pytest.raises(ValueError, match="not both"):
        Shard(key="a", index=1, count=2)


def test_run_flags(capsys):
    """`gitward run` takes --shard or --shard-hash (not both), --leader-elect and the three durations."""
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--shard", "a", "--leader-elect", "--lease-duration", "6"])
    assert (args.shard, args.shard_hash, args.leader_elect) == ("a", None, True)
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (6.0, 10.0, 2.0)
    defaults = parser.parse_args(["run"])
    assert (defaults.shard, defaults.shard_hash, defaults.leader_elect) == (None, None, False)
    assert parser.parse_args(["run", "--shard-hash", "1/3"]).shard_hash == "1/3"
    for argv in (
        ["run", "--shard", "a", "--shard-hash", "0/2"],
        ["run", "--shard", "Team_A"],
        ["run", "--shard-hash", "3/3"],
        ["run", "--retry-period", "0"],
        ["run", "--lease-duration", "soon"],
    ):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 2
    assert "shard key 'Team_A'" in capsys.readouterr().err


def test_inconsistent_durations_are_refused_before_anything_runs(capsys):
    """A renew deadline not shorter than the lease duration would let two replicas lead: a usage error."""
    assert cli.main(["run", "--leader-elect", "--lease-duration", "6", "--renew-deadline", "10"]) == 2
    assert "longer than the renew deadline" in capsys.readouterr().err
