"""render.decrypt with the real sops and real age keys, on commits rendered by render.load.

Every file here is encrypted by the real sops (``support.sops``), the way Flux users encrypt Secrets,
and every plaintext is a fresh ``s3cr3t-<random>`` that no error message or ``repr`` may contain.
Where a test says sops was not run, a wrapper standing in for sops proves it: it records each call
(and the environment it was given) before it execs the real sops.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from gitward.api.conditions import Reason
from gitward.errors import GitwardError, Stalled
from gitward.render.decrypt import AgeIdentities, decrypt
from gitward.render.limits import Limits
from gitward.render.load import Rendered, load
from gitward.render.manifests import Manifest
from gitward.source import git
from support.signing import WorkRepo
from support.sops import ToolError, age_keypair, offline_env, run_tool, sops_decrypt
from support.sops import sops_encrypt as flux_encrypt
from support.toolpaths import age_keygen_binary, kubectl_binary, sops_binary

KUSTOMIZE = (kubectl_binary(), "kustomize")

SECRET = """\
# the database credentials (sops encrypts this comment too)
apiVersion: v1
kind: Secret
metadata:
  name: db  # the name the app looks for
  labels:
    app: db
type: Opaque
data:
  # base64, as data must be
  password: {b64}
  empty: ""
stringData:
  user: {plain}-user
  port: 5432
  debug: true
  ratio: 0.5
  list: [one, 2, false]
"""


@pytest.fixture
def plain() -> str:
    return f"s3cr3t-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def tenant() -> tuple[str, str]:
    return age_keypair()


@pytest.fixture(scope="module")
def stranger() -> tuple[str, str]:
    return age_keypair()


def keys(identity: str, recipient: str) -> AgeIdentities:
    """A Flux-style ``sops-age`` Secret's data: age-keygen's comment lines, then the identity."""
    text = f"# created: 2026-01-01T00:00:00Z\n# public key: {recipient}\n{identity}\n"
    return AgeIdentities.from_secret_data({"age.agekey": text.encode()}, secret="sops-age")


@pytest.fixture
def ids(tenant) -> AgeIdentities:
    return keys(*tenant)


@pytest.fixture
def work(tmp_path) -> WorkRepo:
    return WorkRepo.create(tmp_path / "work")


def secret_yaml(plain: str) -> str:
    return SECRET.format(plain=plain, b64=base64.b64encode(plain.encode()).decode())


def sops_encrypt(text: str, recipients: list[str], *args: str, config: str = "") -> str:
    """The real sops with chosen options (``config`` for the rules only a .sops.yaml can set)."""
    with tempfile.TemporaryDirectory(prefix="gitward-sops-test-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        (root / "config.yaml").write_text(config)
        (root / "in.yaml").write_text(text)
        argv = [sops_binary(), "--config", str(root / "config.yaml"), "encrypt"]
        if not config:
            argv += ["--age", ",".join(recipients)]
        return run_tool([*argv, *args, str(root / "in.yaml")], env=offline_env(root / "home"), cwd=root)


def render(work: WorkRepo, path: str = "deploy") -> Rendered:
    repo = git.Repository(work.path / ".git", options=git.FetchOptions(cache_root=work.path.parent / "cache"))
    return load(repo, work.head(), path, limits=Limits(), kustomize_command=KUSTOMIZE)


def sources(work: WorkRepo, rendered: Rendered) -> dict[str, str]:
    """What the plain YAML path read: each file's committed text."""
    return {m.file: (work.path / m.file).read_text() for m in rendered.manifests}


def refusal(*args, **kwargs) -> GitwardError:
    with pytest.raises(GitwardError) as error:
        decrypt(*args, **kwargs)
    return error.value


def assert_absent(plain: str, *texts: object) -> None:
    """Neither the plaintext nor its base64 appears in any of ``texts``."""
    encoded = base64.b64encode(plain.encode()).decode()
    for text in texts:
        assert plain not in str(text)
        assert encoded not in str(text)


def by_name(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {m.name: m for m in manifests}


class Wrapper:
    """A stand-in for sops that records each call, its environment and whether argv held a key, then execs sops."""

    def __init__(self, root: Path, body: str = "") -> None:
        self.records = root / "records"
        self.records.mkdir(parents=True)
        self.path = root / "sops-wrapper"
        # Only empty files: sops runs under RLIMIT_FSIZE=0, so nothing may write a byte to a file.
        self.path.write_text(
            f"#!{sys.executable}\n"
            "import os, sys\n"
            f"records = {str(self.records)!r}\n"
            "call = os.path.join(records, f'call-{os.getpid()}')\n"
            "os.mkdir(call)\n"
            "for name in os.environ:\n"
            "    open(os.path.join(call, 'env-' + name), 'w').close()\n"
            "if any('AGE-SECRET-KEY' in arg for arg in sys.argv):\n"
            "    open(os.path.join(call, 'key-in-argv'), 'w').close()\n"
            f"{body}"
            f"os.execv({sops_binary()!r}, [{sops_binary()!r}, *sys.argv[1:]])\n"
        )
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)
        self.command = (str(self.path),)

    def calls(self) -> list[Path]:
        return sorted(self.records.iterdir())


# --- keys --------------------------------------------------------------------------------------------


def test_recipients_computed_in_python_are_what_age_keygen_prints(tmp_path):
    for _ in range(3):
        identity, recipient = age_keypair()
        printed = run_tool(
            [age_keygen_binary(), "-y"], env=offline_env(tmp_path), cwd=tmp_path, stdin=identity.encode()
        )
        assert printed.strip() == recipient
        assert keys(identity, recipient).recipients == (recipient,)


# --- the plain YAML path -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_text", [False, True], ids=["as-parsed", "as-written"])
def test_a_flux_style_secret_decrypts_from_plain_yaml(work, caplog, ids, tenant, plain, with_text):
    """Comments, data and stringData, ints, bools, floats and lists: the MAC holds, every value comes back."""
    caplog.set_level(logging.DEBUG)
    encrypted = flux_encrypt(secret_yaml(plain), tenant[1])
    assert plain not in encrypted
    work.commit({"deploy/secret.yaml": encrypted, "deploy/cm.yaml": "apiVersion: v1\nkind: ConfigMap\n"
                 "metadata: {name: cm}\ndata: {k: v}\n"})  # fmt: skip
    rendered = render(work)
    out = decrypt(
        rendered.manifests,
        ids,
        sops_command=(sops_binary(),),
        sources=sources(work, rendered) if with_text else None,
    )
    result = by_name(out)
    assert result["cm"] == by_name(list(rendered.manifests))["cm"]  # untouched
    assert not result["cm"].decrypted
    db = result["db"]
    assert db.decrypted
    assert "sops" not in db.obj
    assert db.obj["data"] == {"password": base64.b64encode(plain.encode()).decode(), "empty": ""}
    assert db.obj["stringData"] == {
        "user": f"{plain}-user",
        "port": 5432,
        "debug": True,
        "ratio": 0.5,
        "list": ["one", 2, False],
    }
    assert db.obj["metadata"] == {"name": "db", "labels": {"app": "db"}}
    assert db.origin == "deploy/secret.yaml#0"
    # The same as the real sops decrypts on its own.
    oracle = yaml.safe_load(sops_decrypt(encrypted, tenant[0]))
    assert dict(db.obj) == oracle
    assert_absent(plain, caplog.text)  # nothing logged the decrypted object


def test_unusual_text_in_clear_and_encrypted_values_keeps_the_mac(work, ids, tenant, plain):
    """Characters JSON and YAML escape differently (astral, U+2028, NEL, tabs, quotes) go to sops unchanged."""
    odd = 'é 😀 \u2028 \x85 \t "q" \\ \x7f'
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "odd", "annotations": {"note": odd, "n": "1e3", "y": "yes"}},
        "stringData": {"password": plain + odd, "big": 2**62, "tiny": 1e-7, "flag": False, "none": None},
    }
    encrypted = flux_encrypt(yaml.safe_dump(manifest, allow_unicode=True), tenant[1])
    work.commit({"deploy/odd.yaml": encrypted})
    rendered = render(work)
    # PyYAML wrote 1e3 unquoted, which sops (YAML 1.2) read as a number: the file holds what sops saw.
    oracle = yaml.safe_load(sops_decrypt(encrypted, tenant[0]))
    assert oracle["metadata"]["annotations"]["n"] == 1000
    for text in (None, sources(work, rendered)):
        (out,) = decrypt(rendered.manifests, ids, sops_command=(sops_binary(),), sources=text)
        assert out.obj["metadata"] == oracle["metadata"]  # (the oracle's YAML reads 1e-07 as text)
        assert out.obj["metadata"]["annotations"]["note"] == odd
        assert out.obj["stringData"] == manifest["stringData"]


def test_a_multi_document_sops_file_decrypts_whole_and_not_in_part(work, ids, tenant, plain):
    """sops writes one MAC over every document of a file: the documents go to sops together."""
    docs = "---\n".join(
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: s{i}\nstringData:\n  p: {plain}-{i}\n"
        for i in range(3)
    )
    encrypted = flux_encrypt(docs, tenant[1])
    work.commit({"deploy/all.yaml": encrypted})
    rendered = render(work)
    out = decrypt(rendered.manifests, ids, sops_command=(sops_binary(),))
    assert [(m.name, m.obj["stringData"]["p"], m.origin) for m in out] == [
        (f"s{i}", f"{plain}-{i}", f"deploy/all.yaml#{i}") for i in range(3)
    ]
    # A document dropped from the file: the MAC says so.
    work.commit({"deploy/all.yaml": "\n---\n".join(encrypted.split("\n---\n")[:2])})
    error = refusal(render(work).manifests, ids, sops_command=(sops_binary(),))
    assert error.reason is Reason.DECRYPTION_FAILED
    assert "its MAC does not match" in error.message
    assert_absent(plain, error, error.message)


def test_comment_rules_need_the_text_as_written(work, ids, tenant, plain):
    """encrypted_comment_regex: comments decide what is encrypted, so only the written text can be decrypted."""
    text = f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: c\nstringData:\n  # sops:enc\n  password: {plain}\n"
    config = f"creation_rules:\n  - age: {tenant[1]}\n    encrypted_comment_regex: 'sops:enc'\n"
    encrypted = sops_encrypt(text, [tenant[1]], config=config)
    assert plain not in encrypted
    work.commit({"deploy/c.yaml": encrypted})
    rendered = render(work)
    (out,) = decrypt(rendered.manifests, ids, sops_command=(sops_binary(),), sources=sources(work, rendered))
    assert out.obj["stringData"] == {"password": plain}
    error = refusal(rendered.manifests, ids, sops_command=(sops_binary(),))
    assert error.reason is Reason.DECRYPTION_FAILED
    assert "chooses what is encrypted by comments (encrypted_comment_regex)" in error.message


def test_values_left_in_the_clear_are_not_marked_decrypted(work, ids, tenant, plain):
    """Only a Secret whose data and stringData were all ciphertext counts as decrypted for the policy."""
    text = f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: half\nstringData:\n  password: {plain}\n  user: admin\n"
    encrypted = sops_encrypt(text, [tenant[1]], "--encrypted-regex", "^password$")
    work.commit({"deploy/half.yaml": encrypted})
    (out,) = decrypt(render(work).manifests, ids, sops_command=(sops_binary(),))
    assert out.obj["stringData"] == {"password": plain, "user": "admin"}
    assert not out.decrypted


# --- through kustomize -------------------------------------------------------------------------------


def test_a_secret_through_a_kustomize_overlay_decrypts_without_the_mac(work, ids, tenant, plain):
    """kustomize rewrites the object (sorted keys, namespace, prefix, labels), so the MAC cannot hold there.

    That is why Flux does not check it by default; each value's AES-GCM tag (bound to its path) still does.
    """
    work.commit(
        {
            "base/secret.yaml": flux_encrypt(secret_yaml(plain), tenant[1]),
            "base/kustomization.yaml": "resources: [secret.yaml]\n",
            "deploy/kustomization.yaml": "resources: [../base]\nnamespace: team-a\nnamePrefix: prod-\n"
            "commonLabels: {env: prod}\n",
        }
    )
    rendered = render(work)
    assert rendered.kustomized
    (out,) = decrypt(rendered.manifests, ids, sops_command=(sops_binary(),), verify_mac=False)
    assert out.decrypted
    assert out.name == "prod-db"
    assert out.namespace == "team-a"
    assert out.obj["metadata"]["labels"] == {"app": "db", "env": "prod"}
    assert out.obj["stringData"]["user"] == f"{plain}-user"
    assert out.obj["data"]["password"] == base64.b64encode(plain.encode()).decode()
    assert "sops" not in out.obj
    # With the MAC checked, kustomize's rewrite is a mismatch: here, and even where it only sorts keys.
    error = refusal(rendered.manifests, ids, sops_command=(sops_binary(),), verify_mac=True)
    assert "its MAC does not match" in error.message
    assert_absent(plain, error.message, repr(error))
    only_sorted = render(work, "base").manifests
    assert list(only_sorted[0].obj) == sorted(only_sorted[0].obj)
    error = refusal(only_sorted, ids, sops_command=(sops_binary(),), verify_mac=True)
    assert "its MAC does not match" in error.message
    (out,) = decrypt(only_sorted, ids, sops_command=(sops_binary(),), verify_mac=False)
    assert out.obj["stringData"]["user"] == f"{plain}-user"


def test_a_changed_ciphertext_is_refused_through_kustomize_too(work, ids, tenant, plain):
    encrypted = flux_encrypt(secret_yaml(plain), tenant[1])
    work.commit(
        {
            "deploy/secret.yaml": tamper_value(encrypted, "user"),
            "deploy/kustomization.yaml": "resources: [secret.yaml]\n",
        }
    )
    error = refusal(render(work).manifests, ids, sops_command=(sops_binary(),), verify_mac=False)
    assert error.reason is Reason.DECRYPTION_FAILED
    assert "a value does not decrypt" in error.message
    assert_absent(plain, error.message, repr(error))


# --- refusals ----------------------------------------------------------------------------------------


def tamper_value(encrypted: str, key: str) -> str:
    """Flip one character of the ciphertext of ``key``'s value (still valid base64)."""
    match = re.search(rf"(\n\s+{key}: ENC\[AES256_GCM,data:)(.)", encrypted)
    assert match is not None
    flipped = "A" if match.group(2) != "A" else "B"
    return encrypted[: match.start(2)] + flipped + encrypted[match.end(2) :]


def test_a_file_for_another_tenants_key_is_refused_without_running_sops(
    work, tmp_path, ids, tenant, stranger, plain
):
    work.commit({"deploy/secret.yaml": flux_encrypt(secret_yaml(plain), stranger[1])})
    wrapper = Wrapper(tmp_path / "wrapper")
    error = refusal(render(work).manifests, ids, sops_command=wrapper.command)
    assert error.reason is Reason.DECRYPTION_FAILED
    assert error.message == (
        "1 SOPS-encrypted object cannot be decrypted: Secret/db (deploy/secret.yaml#0): "
        f"it was encrypted for {stranger[1]}; the tenant's key ({tenant[1]}) is not among them"
    )
    assert wrapper.calls() == []
    assert_absent(plain, error.message, repr(error), repr(ids))
    # Encrypted for both, either tenant decrypts it.
    work.commit({"deploy/secret.yaml": flux_encrypt(secret_yaml(plain), [stranger[1], tenant[1]])})
    for who in (ids, keys(*stranger)):
        (out,) = decrypt(render(work).manifests, who, sops_command=(sops_binary(),))
        assert out.obj["stringData"]["user"] == f"{plain}-user"
    # A Secret holding several identities (several keys, several lines) opens a file for any one of them.
    work.commit({"deploy/secret.yaml": flux_encrypt(secret_yaml(plain), tenant[1])})
    several = AgeIdentities.from_secret_data(
        {
            "old.agekey": f"{stranger[0]}\n".encode(),
            "new.agekey": f"# rotated\n{stranger[0]}\n{tenant[0]}\n".encode(),
        },
        secret="sops-age",
    )
    (out,) = decrypt(render(work).manifests, several, sops_command=(sops_binary(),))
    assert out.obj["stringData"]["user"] == f"{plain}-user"


def tamper_enc(encrypted: str) -> str:
    """Change the first character of the age-encrypted data key."""
    return re.sub(
        r"(-----BEGIN AGE ENCRYPTED FILE-----\n\s+)(\S)",
        lambda m: m.group(1) + ("A" if m.group(2) != "A" else "B"),
        encrypted,
        count=1,
    )


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        (lambda text: tamper_value(text, "user"), "a value does not decrypt"),
        (lambda text: text.replace("user: ENC", "usr: ENC"), "a value does not decrypt"),  # moved
        (lambda text: tamper_value(text, "mac"), "its MAC does not decrypt"),
        (lambda text: text.replace('lastmodified: "20', 'lastmodified: "19'), "its MAC does not decrypt"),
        (lambda text: text.replace("kind: Secret", "kind: ConfigMap"), "its MAC does not match"),
        (lambda text: text.replace("app: db", "app: other"), "its MAC does not match"),
        (tamper_enc, "the tenant's age key does not open its data key"),
    ],
    ids=["ciphertext", "moved-value", "mac", "lastmodified", "kind", "label", "data-key"],
)
def test_a_tampered_file_is_refused_naming_no_plaintext(work, ids, tenant, plain, change, cause):
    encrypted = flux_encrypt(secret_yaml(plain), tenant[1])
    tampered = change(encrypted)
    assert tampered != encrypted
    work.commit({"deploy/secret.yaml": tampered})
    rendered = render(work)
    for text in (None, sources(work, rendered)):
        error = refusal(rendered.manifests, ids, sops_command=(sops_binary(),), sources=text)
        assert isinstance(error, Stalled)
        assert error.reason is Reason.DECRYPTION_FAILED
        assert "deploy/secret.yaml#0): " + cause in error.message
        assert_absent(plain, error.message, repr(error), error.args)


def test_sops_quoting_a_plaintext_value_is_not_repeated(work, ids, tenant, plain):
    """A value added in the clear to an encrypted file: sops' own error quotes it, gitward's does not."""
    encrypted = flux_encrypt(secret_yaml("x"), tenant[1])
    leaked = encrypted.replace("stringData:\n", f"stringData:\n    token: {plain}\n", 1)
    with pytest.raises(ToolError) as oracle:
        sops_decrypt(leaked, tenant[0])
    assert plain in oracle.value.stderr  # what sops itself prints
    work.commit({"deploy/secret.yaml": leaked})
    rendered = render(work)
    for mac in (True, False):
        error = refusal(rendered.manifests, ids, sops_command=(sops_binary(),), verify_mac=mac)
        assert error.reason is Reason.DECRYPTION_FAILED
        assert "a value does not decrypt" in error.message
        assert_absent(plain, error.message, repr(error), error.args)


def with_metadata(encrypted: str, **fields: object) -> str:
    """Real sops output with fields added to its metadata, as a tenant's file could have them."""
    body = yaml.safe_load(encrypted)
    body["sops"] = {**fields, **body["sops"]}
    return yaml.safe_dump(body, sort_keys=False)


VAULT = [
    {
        "vault_address": "http://127.0.0.1:9",
        "engine_path": "sops",
        "key_name": "k",
        "created_at": "2026-01-01T00:00:00Z",
        "enc": "vault:v1:x",
    }
]
KMS = [
    {
        "arn": "arn:aws:kms:us-east-1:111122223333:key/x",
        "created_at": "2026-01-01T00:00:00Z",
        "enc": "AQICAHh",
        "aws_profile": "",
    }
]


@pytest.mark.parametrize(
    "fields",
    [{"hc_vault": VAULT}, {"kms": KMS}, {"keyservice": "tcp://127.0.0.1:9"}],
    ids=["hc_vault", "kms", "keyservice"],
)
def test_key_sources_other_than_age_are_refused_and_sops_never_runs(
    work, tmp_path, ids, tenant, plain, fields
):
    encrypted = flux_encrypt(secret_yaml(plain), tenant[1])
    fine = flux_encrypt(secret_yaml(plain).replace("name: db", "name: fine"), tenant[1])
    work.commit({"deploy/secret.yaml": with_metadata(encrypted, **fields), "deploy/fine.yaml": fine})
    wrapper = Wrapper(tmp_path / "wrapper")
    rendered = render(work)
    error = refusal(rendered.manifests, ids, sops_command=wrapper.command)
    assert error.reason is Reason.DECRYPTION_FAILED
    assert error.message.startswith(
        "1 SOPS-encrypted object cannot be decrypted: Secret/db (deploy/secret.yaml#0)"
    )
    assert "gitward decrypts only" in error.message
    # Only the acceptable file went to sops; the refused one never did.
    assert len(wrapper.calls()) == 1
    assert_absent(plain, error.message, repr(error))
    # And without the acceptable file, sops is not started at all.
    refused_only = [m for m in rendered.manifests if m.name == "db"]
    wrapper = Wrapper(tmp_path / "wrapper2")
    refusal(refused_only, ids, sops_command=wrapper.command)
    assert wrapper.calls() == []


# --- how sops runs -----------------------------------------------------------------------------------

EXPECTED_ENV = {
    "PATH", "HOME", "XDG_CONFIG_HOME", "GNUPGHOME", "TMPDIR", "LANG", "LC_ALL",
    "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
    "SOPS_AGE_KEY", "GOMEMLIMIT",
}  # fmt: skip


def test_sops_gets_only_the_tenants_key_and_an_empty_world(
    work, tmp_path, monkeypatch, ids, tenant, stranger, plain
):
    """The operator's own environment, home and keys never reach sops; the key is not on the command line.

    The file names both tenants but only the stranger's entry is real (ours is a copy of the wrong
    data key), so the only way to decrypt it is the stranger's identity: planted here in every place
    sops looks by default, where the real sops, left to itself, does find it.
    """
    encrypted = flux_encrypt(secret_yaml(plain), stranger[1])
    body = yaml.safe_load(encrypted)
    # Our recipient first, with the stranger's enc: sops tries it with our key, then the stranger's.
    body["sops"]["age"].insert(0, {"recipient": tenant[1], "enc": body["sops"]["age"][0]["enc"]})
    decoy = yaml.safe_dump(body, sort_keys=False)
    home = tmp_path / "operator-home"
    (home / ".config" / "sops" / "age").mkdir(parents=True)
    (home / ".config" / "sops" / "age" / "keys.txt").write_text(stranger[0] + "\n")
    (home / "keys.txt").write_text(stranger[0] + "\n")
    planted = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "SOPS_AGE_KEY": stranger[0],
        "SOPS_AGE_KEY_FILE": str(home / "keys.txt"),
        "SOPS_KEYSERVICE": "tcp://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "example",
        "VAULT_ADDR": "http://127.0.0.1:9",
        "VAULT_TOKEN": "example",
        "GOOGLE_APPLICATION_CREDENTIALS": str(home / "gcp.json"),
        "AZURE_CLIENT_SECRET": "example",
    }
    # The built tools are found under the cache, which follows HOME unless XDG_CACHE_HOME says otherwise.
    monkeypatch.setenv("XDG_CACHE_HOME", os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"))
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    # Control: the real sops, left with the operator's environment, finds the planted keys.txt and opens it.
    inherited = {k: v for k, v in os.environ.items() if k not in {"SOPS_KEYSERVICE", "SOPS_AGE_KEY_FILE"}}
    del inherited["SOPS_AGE_KEY"]
    argv = [sops_binary(), "decrypt", "--input-type", "yaml", "--output-type", "yaml"]
    opened = run_tool(argv, env=inherited, cwd=tmp_path, stdin=decoy.encode())
    assert f"{plain}-user" in opened
    work.commit({"deploy/secret.yaml": decoy})
    wrapper = Wrapper(tmp_path / "wrapper")
    error = refusal(render(work).manifests, ids, sops_command=wrapper.command)
    assert error.reason is Reason.DECRYPTION_FAILED
    assert "does not open its data key" in error.message
    assert_absent(plain, error.message, repr(error))
    (call,) = wrapper.calls()
    seen = {p.name.removeprefix("env-") for p in call.iterdir() if p.name.startswith("env-")}
    assert seen == EXPECTED_ENV
    assert not (call / "key-in-argv").exists()
    # With the tenant's own file, the same wrapper decrypts: the environment is enough, and only that.
    work.commit({"deploy/secret.yaml": flux_encrypt(secret_yaml(plain), tenant[1])})
    (out,) = decrypt(render(work).manifests, ids, sops_command=wrapper.command)
    assert out.obj["stringData"]["user"] == f"{plain}-user"


def test_a_slow_sops_is_render_too_large_within_the_budget(work, tmp_path, ids, tenant, plain):
    work.commit({"deploy/secret.yaml": flux_encrypt(secret_yaml(plain), tenant[1])})
    wrapper = Wrapper(tmp_path / "wrapper", body="import time\ntime.sleep(60)\n")
    started = time.monotonic()
    error = refusal(
        render(work).manifests, ids, sops_command=wrapper.command, limits=Limits(kustomize_timeout=2)
    )
    assert time.monotonic() - started < 15
    assert error.reason is Reason.RENDER_TOO_LARGE
    assert "took longer than 2s" in error.message


def test_output_beyond_the_rendered_bytes_budget_is_render_too_large(work, tmp_path, ids, tenant, plain):
    work.commit({"deploy/secret.yaml": flux_encrypt(secret_yaml(plain), tenant[1])})
    flood = "while True:\n    sys.stdout.buffer.write(b'x' * 65536)\n"
    wrapper = Wrapper(tmp_path / "wrapper", body=flood)
    error = refusal(
        render(work).manifests, ids, sops_command=wrapper.command, limits=Limits(max_rendered_bytes=100_000)
    )
    assert error.reason is Reason.RENDER_TOO_LARGE
    assert "100000 rendered bytes" in error.message
    # The real decryption fits a budget its own size.
    (out,) = decrypt(
        render(work).manifests, ids, sops_command=(sops_binary(),), limits=Limits(max_rendered_bytes=4096)
    )
    assert out.decrypted
