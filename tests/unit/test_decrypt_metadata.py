"""render.decrypt, the pure parts: age identities from a Secret, and the sops metadata gitward refuses.

The metadata check runs before sops: a refused object must fail without sops ever being looked up, which
these tests show by naming a sops command that does not exist (looking it up would be Waiting, not a
DecryptionFailed refusal).
"""

from __future__ import annotations

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled, Waiting
from gitward.render.decrypt import (
    AgeIdentities,
    bech32_decode,
    bech32_encode,
    decrypt,
    is_encrypted,
    metadata_problem,
    recipient_of,
    revealed,
    x25519,
)
from gitward.render.manifests import Manifest

# Throwaway pairs printed by age-keygen v1.3.2 (identity, then what `age-keygen -y` prints for it).
IDENTITY = "AGE-SECRET-KEY-1W8Z4WLRVKGW2QN758TTWNP069NXKF4MUY4H35YMWAALXDLWDC5HQECFZM6"
RECIPIENT = "age1ah6u0rgmz94vx26r5fqvxu95d3x3m0ht8yug23q2u07qz3dnqcwqpwge20"
OTHER_IDENTITY = "AGE-SECRET-KEY-19SM7VWPK2FFU2WMTJUYATE74WW53JW8NULKNV2EKNKERTNZ5MGMQ8ZGU3D"
OTHER_RECIPIENT = "age1d5q3nqklms6euln4xgww66fd029ud7cyqp296dwj9fmuf9t6hfyq25xywn"
KEYGEN_FILE = f"# created: 2026-11-25T22:47:31Z\n# public key: {RECIPIENT}\n{IDENTITY}\n"
NO_SOPS = ("/nonexistent/gitward-test/sops",)

FORBIDDEN = {
    "kms": [{"arn": "arn:aws:kms:us-east-1:1:key/x", "enc": "AQ==", "created_at": "2024-01-01T00:00:00Z"}],
    "gcp_kms": [{"resource_id": "projects/p/locations/l/keyRings/r/cryptoKeys/k", "enc": "AQ=="}],
    "hckms": [{"key_id": "tr-west-1:abc", "enc": "AQ=="}],
    "azure_kv": [{"vault_url": "https://v.vault.azure.net", "name": "k", "version": "1", "enc": "AQ=="}],
    "hc_vault": [
        {"vault_address": "http://169.254.169.254", "engine_path": "sops", "key_name": "k", "enc": "x"}
    ],
    "pgp": [{"fp": "0123456789ABCDEF", "enc": "-----BEGIN PGP MESSAGE-----"}],
}


def age_entry(recipient: str = RECIPIENT) -> dict[str, str]:
    return {"recipient": recipient, "enc": "-----BEGIN AGE ENCRYPTED FILE-----\n...\n"}


def metadata(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "age": [age_entry()],
        "lastmodified": "2026-01-01T00:00:00Z",
        "mac": "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]",
        "encrypted_regex": "^(data|stringData)$",
        "version": "3.13.2",
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not ...}


def secret(name: str = "db", sops: object = None, **fields: object) -> Manifest:
    obj: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"password": "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]"},
        **fields,
    }
    if sops is not None:
        obj["sops"] = sops
    return Manifest(obj=obj, file=f"deploy/{name}.yaml", document=0)


def identities(*values: str) -> AgeIdentities:
    return AgeIdentities.from_secret_data(
        {f"key{i}.agekey": v.encode() for i, v in enumerate(values or (KEYGEN_FILE,))}, secret="sops-age"
    )


# --- keys: RFC 7748 X25519 and age's bech32 -----------------------------------------------------------


def test_x25519_matches_rfc_7748():
    """Section 6.1's key pairs, and the first iteration of section 5.2's test."""
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    base = (9).to_bytes(32, "little")
    assert x25519(alice, base).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert x25519(bob, base).hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert x25519(alice, x25519(bob, base)).hex() == shared
    assert x25519(base, base).hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"


def test_recipient_of_an_identity_is_what_age_keygen_prints():
    assert recipient_of(IDENTITY) == RECIPIENT
    assert recipient_of(OTHER_IDENTITY) == OTHER_RECIPIENT


def test_bech32_round_trip_and_checksum():
    hrp, payload = bech32_decode(RECIPIENT)
    assert hrp == "age"
    assert len(payload) == 32
    assert bech32_encode("age", payload) == RECIPIENT
    broken = RECIPIENT[:-1] + ("q" if RECIPIENT[-1] != "q" else "p")
    with pytest.raises(ValueError, match="checksum"):
        bech32_decode(broken)
    with pytest.raises(ValueError, match="mixes"):
        bech32_decode(IDENTITY[:20].lower() + IDENTITY[20:])


# --- AgeIdentities -----------------------------------------------------------------------------------


def test_identities_from_an_age_keygen_file_with_its_comment_lines():
    parsed = identities(KEYGEN_FILE)
    assert parsed.recipients == (RECIPIENT,)
    assert parsed.keys == ("key0.agekey",)
    assert parsed.environment_value() == IDENTITY + "\n"


def test_several_identities_in_one_value_and_in_several_keys_other_keys_ignored():
    data = {
        "a.agekey": f"{KEYGEN_FILE}\n\n{OTHER_IDENTITY}\r\n".encode(),
        "b.agekey": f"  {IDENTITY}  \n".encode(),  # the same identity again: kept once
        "sops.asc": b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n",  # not *.agekey: not read
        "README": b"anything",
    }
    parsed = AgeIdentities.from_secret_data(data, secret="sops-age")
    assert parsed.recipients == (RECIPIENT, OTHER_RECIPIENT)
    assert parsed.keys == ("a.agekey", "b.agekey")
    assert parsed.environment_value().split() == [IDENTITY, OTHER_IDENTITY]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not a key at all, but maybe a password: hunter2-secret", "line 1: is not an age identity"),
        ("# created: 2026-01-01\n# only comments\n\n", "holds no age identity"),
        ("", "holds no age identity"),
        (f"{IDENTITY}\ngarbage-line-hunter2-secret\n", "line 2: is not an age identity"),
        (
            IDENTITY[:-1] + ("Q" if IDENTITY[-1] != "Q" else "P"),
            "line 1: is not a valid identity: its bech32",
        ),
        (
            "AGE-PLUGIN-YUBIKEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQ",
            "age plugin identity; gitward runs no age plugins",
        ),
        ("AGE-SECRET-KEY-PQ-1QQQQQQQQQQQQQQQQQQQQQQQQQQQ", "post-quantum"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r\n", "SSH key"),
        (IDENTITY.lower(), "line 1: is not an age identity"),
    ],
)
def test_a_value_without_a_usable_identity_is_refused_naming_the_key_not_the_value(value, expected):
    with pytest.raises(Stalled) as error:
        AgeIdentities.from_secret_data(
            {"good.agekey": KEYGEN_FILE.encode(), "bad.agekey": value.encode()}, secret="sops-age"
        )
    assert error.value.reason is Reason.DECRYPTION_FAILED
    assert "Secret 'sops-age' key 'bad.agekey'" in error.value.message
    assert expected in error.value.message
    for line in value.splitlines():
        if len(line.strip()) > 12:
            assert line.strip() not in error.value.message
            assert line.strip().lower() not in error.value.message.lower()
    assert IDENTITY not in error.value.message


def test_a_secret_without_agekey_entries_and_one_that_is_not_utf8():
    with pytest.raises(Stalled, match=r"no '\*\.agekey' entry") as error:
        AgeIdentities.from_secret_data({"identity": KEYGEN_FILE.encode()}, secret="sops-age")
    assert IDENTITY not in str(error.value)
    with pytest.raises(Stalled, match=r"'x\.agekey' is not UTF-8"):
        AgeIdentities.from_secret_data({"x.agekey": b"\xff\xfe" + IDENTITY.encode()}, secret="s")


def test_repr_str_and_format_never_show_an_identity():
    parsed = identities(KEYGEN_FILE, OTHER_IDENTITY)
    holder = [parsed, {"ids": parsed}]
    for shown in (repr(parsed), str(parsed), f"{parsed}", f"{parsed!r}", repr(holder), str(holder)):
        assert "AGE-SECRET-KEY" not in shown
        assert IDENTITY[20:40] not in shown
        assert RECIPIENT in shown  # public: what an admin checks the Secret against
    assert "sops-age" in repr(parsed)


# --- is_encrypted and the metadata check -------------------------------------------------------------


def test_only_a_non_empty_sops_key_marks_an_object_encrypted():
    assert is_encrypted({"sops": metadata()})
    assert not is_encrypted({"kind": "Secret"})
    assert not is_encrypted({"sops": None})
    assert not is_encrypted({"sops": {}})


def test_age_only_metadata_for_the_tenant_is_accepted():
    assert metadata_problem(metadata(), [RECIPIENT]) is None
    # Other recipients beside the tenant's are fine (a developer's own key, another cluster's).
    assert metadata_problem(metadata(age=[age_entry(OTHER_RECIPIENT), age_entry()]), [RECIPIENT]) is None
    # Older sops versions write every key type, empty.
    empty = {name: [] for name in FORBIDDEN} | {"pgp": None, "unencrypted_suffix": "_unencrypted"}
    assert metadata_problem(metadata(**empty, encrypted_regex=...), [RECIPIENT]) is None


@pytest.mark.parametrize("source", sorted(FORBIDDEN))
def test_every_key_source_other_than_age_is_refused(source):
    """Even beside the tenant's own age key: sops would try it (a request to the file's endpoint)."""
    problem = metadata_problem(metadata(**{source: FORBIDDEN[source]}), [RECIPIENT])
    assert problem is not None
    assert f"(sops.{source})" in problem
    assert "never contacts a key service" in problem


@pytest.mark.parametrize("source", sorted(FORBIDDEN))
def test_a_key_group_with_a_non_age_key_is_refused(source):
    groups = [{"age": [age_entry()]}, {"age": [age_entry()], source: FORBIDDEN[source]}]
    problem = metadata_problem(metadata(age=..., key_groups=groups, shamir_threshold=1), [RECIPIENT])
    assert problem is not None
    assert f"sops.key_groups[1].{source}" in problem


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"keyservice": "tcp://attacker.example:5000"}, "fields sops does not define (keyservice)"),
        ({"key_groups": [{"age": [age_entry()], "keyservice": ["x"]}]}, "key_groups[0]: keyservice"),
        ({"mac": ...}, "has no mac"),
        ({"age": "age1abc"}, "sops.age is not a list"),
        ({"age": [{"recipient": RECIPIENT}]}, "needs a recipient and an enc"),
        ({"age": [age_entry() | {"plugin": "x"}]}, "sops.age[0] has fields sops does not define"),
        ({"age": ..., "key_groups": "x"}, "key_groups is not a list"),
        ({"age": []}, "no age recipient"),
    ],
)
def test_malformed_or_unknown_metadata_is_refused(extra, expected):
    problem = metadata_problem(metadata(**extra), [RECIPIENT])
    assert problem is not None
    assert expected in problem


def test_metadata_that_is_not_a_mapping():
    assert metadata_problem("ENC[...]", [RECIPIENT]) == "its sops metadata is a str, not a mapping"


def test_a_file_for_other_recipients_says_whom_it_was_for():
    problem = metadata_problem(metadata(age=[age_entry(OTHER_RECIPIENT)]), [RECIPIENT])
    assert problem == (
        f"it was encrypted for {OTHER_RECIPIENT}; the tenant's key ({RECIPIENT}) is not among them"
    )
    many = [age_entry(f"age1{'q' * 58}{i}") for i in range(7)]
    problem = metadata_problem(metadata(age=many), [RECIPIENT])
    assert problem is not None
    assert "and 3 more" in problem


def test_shamir_key_groups_need_the_tenant_in_enough_groups():
    ours, theirs = {"age": [age_entry()]}, {"age": [age_entry(OTHER_RECIPIENT)]}
    two_of_three = metadata(age=..., key_groups=[ours, ours, theirs], shamir_threshold=2)
    assert metadata_problem(two_of_three, [RECIPIENT]) is None
    one_of_two = metadata(age=..., key_groups=[ours, theirs], shamir_threshold=2)
    problem = metadata_problem(one_of_two, [RECIPIENT])
    assert problem is not None
    assert "split into 2 key groups, 2 of which are needed" in problem
    assert "is in 1 of them" in problem
    # No threshold written: sops needs every group.
    assert metadata_problem(metadata(age=..., key_groups=[ours, theirs]), [RECIPIENT]) is not None
    # A single group is just a group.
    assert metadata_problem(metadata(age=..., key_groups=[ours]), [RECIPIENT]) is None


def test_tenant_recipients_are_matched_whatever_their_case():
    assert metadata_problem(metadata(age=[age_entry(RECIPIENT.upper())]), [RECIPIENT]) is None


def test_tenant_written_strings_in_messages_are_bounded_and_printable():
    problem = metadata_problem(metadata(age=[age_entry("age1" + "x" * 500 + "\n\x1b[31m")]), [RECIPIENT])
    assert problem is not None
    assert "\x1b" not in problem
    assert "\n" not in problem
    assert len(problem) < 300


# --- decrypt() before it runs anything ---------------------------------------------------------------


def test_nothing_encrypted_needs_no_key_and_no_sops():
    manifests = [secret("a"), secret("b", sops=None)]
    assert decrypt(manifests, None, sops_command=NO_SOPS) == manifests
    assert decrypt([], identities(), sops_command=NO_SOPS) == []


def test_an_encrypted_object_without_a_tenant_key_lists_every_one():
    manifests = [secret("plain"), secret("a", sops=metadata()), secret("b", sops=metadata())]
    with pytest.raises(Stalled) as error:
        decrypt(manifests, None, sops_command=NO_SOPS)
    assert error.value.reason is Reason.DECRYPTION_FAILED
    assert "the tenant has no decryption key" in error.value.message
    assert "Secret/a (deploy/a.yaml#0)" in error.value.message
    assert "Secret/b (deploy/b.yaml#0)" in error.value.message
    assert "plain" not in error.value.message


def test_refused_metadata_fails_every_object_together_without_looking_for_sops():
    manifests = [
        secret("vault", sops=metadata(hc_vault=FORBIDDEN["hc_vault"])),
        secret("fine"),
        secret("kms", sops=metadata(kms=FORBIDDEN["kms"])),
        secret("stranger", sops=metadata(age=[age_entry(OTHER_RECIPIENT)])),
    ]
    with pytest.raises(Stalled) as error:  # not Waiting: sops was never looked up
        decrypt(manifests, identities(), sops_command=NO_SOPS)
    message = error.value.message
    assert error.value.reason is Reason.DECRYPTION_FAILED
    assert message.startswith("3 SOPS-encrypted objects cannot be decrypted")
    assert message.index("Secret/vault") < message.index("Secret/kms") < message.index("Secret/stranger")
    assert "HashiCorp Vault (sops.hc_vault)" in message
    assert "AWS KMS (sops.kms)" in message
    assert f"encrypted for {OTHER_RECIPIENT}" in message
    assert "169.254.169.254" not in message  # the endpoint is not repeated, let alone contacted


def test_a_missing_sops_is_the_operators_problem():
    with pytest.raises(Waiting) as error:
        decrypt([secret("a", sops=metadata())], identities(), sops_command=NO_SOPS)
    assert error.value.reason is Reason.RECONCILE_ERROR
    assert "sops is not available" in error.value.message
    assert "--sops" in error.value.message


def test_an_encrypted_kind_or_name_is_shown_as_encrypted():
    manifest = Manifest(
        obj={
            "apiVersion": "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]",
            "kind": "ENC[AES256_GCM,data:BBBB,iv:AAAA,tag:AAAA,type:str]",
            "metadata": {"name": "ENC[AES256_GCM,data:CCCC,iv:AAAA,tag:AAAA,type:str]"},
            "sops": metadata(age=[age_entry(OTHER_RECIPIENT)]),
        },
        file="deploy/all.yaml",
        document=2,
    )
    with pytest.raises(Stalled) as error:
        decrypt([manifest], identities(), sops_command=NO_SOPS)
    assert "(encrypted)/(encrypted) (deploy/all.yaml#2)" in error.value.message
    assert "ENC[" not in error.value.message


def test_revealed_lists_every_value_that_was_ciphertext_whatever_the_kind():
    cipher = "ENC[AES256_GCM,data:YWJj,iv:aXZpdml2aXZpdml2,tag:dGFndGFndGFndGFn,type:str]"
    encrypted = {
        "kind": "ConfigMap",
        "metadata": {"name": "c"},
        "data": {"open": "plain", "closed": cipher},
        "env": [{"value": cipher}],
        "sops": {"mac": cipher},
    }
    decrypted = {
        "kind": "ConfigMap",
        "metadata": {"name": "c"},
        "data": {"open": "plain", "closed": "hunter2-value"},
        "env": [{"value": "other-value"}],
    }
    assert revealed(encrypted, decrypted) == {"hunter2-value", "other-value"}
