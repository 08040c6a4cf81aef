"""gitward's YAML loader against the Kubernetes toolchain as the oracle (kustomize, as built into kubectl).

Each case is a manifest written the way real repositories write them. The
oracle is ``kubectl kustomize`` over a kustomization that lists the file:
where it accepts the file, gitward must accept it too and produce the same
objects; where it refuses, gitward must refuse as well.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitward.errors import Stalled
from gitward.render.limits import Limits
from gitward.render.yamlsafe import load_documents
from support.toolpaths import kubectl_binary

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"

CASES = {
    "trailing tabs after values": "apiVersion: v1\t\nkind: ConfigMap\t\nmetadata:\n  name: tabs\t\ndata:\n  a: b\t\n",
    "a tab before a comment": CM.format(name="comment") + "data:\n  a: b\t# why\n",
    "a tab after the colon": "apiVersion:\tv1\nkind:\tConfigMap\nmetadata:\n  name:\ttab-after\n",
    "CRLF line endings": CM.format(name="crlf").replace("\n", "\r\n") + "data:\r\n  a: b\r\n",
    "a byte order mark": "\ufeff" + CM.format(name="bom"),
    "document markers and empty documents": "---\n---\n" + CM.format(name="markers") + "...\n---\n",
    "JSON as YAML": '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "json"}, "data": {"a": "1"}}\n',
    "block scalars": CM.format(name="blocks")
    + "data:\n  literal: |\n    line one\n    line two\n  folded: >-\n    folded\n    text\n  keep: |+\n    kept\n\n",
    "anchors within budget": CM.format(name="anchors") + "data:\n  a: &v shared\n  b: *v\n",
    "comments everywhere": "# head\n"
    + CM.format(name="comments")
    + "# middle\ndata: # after\n  a: b # tail\n",
    "quoted strings and escapes": CM.format(name="quotes")
    + "data:\n  a: \"tab\\there\"\n  b: 'it''s'\n  c: \"\\u00e9\"\n",
    "timestamps and numbers as strings in data": CM.format(name="stamps")
    + 'data:\n  when: "2024-01-01"\n  port: "8080"\n',
    "a tab used for indentation": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n\tname: bad\n",
}


def oracle(tmp_path: Path, text: str) -> list[object] | None:
    """What kustomize makes of the file: its objects, read back; None if kustomize refuses it."""
    (tmp_path / "x.yaml").write_bytes(text.encode())
    (tmp_path / "kustomization.yaml").write_text("resources: [x.yaml]\n")
    done = subprocess.run(
        [kubectl_binary(), "kustomize", str(tmp_path)], capture_output=True, check=False, timeout=60
    )
    if done.returncode != 0:
        return None
    return [value for _, value in load_documents(done.stdout.decode(), file="oracle", limits=Limits())]


def ours(text: str) -> list[object] | None:
    try:
        return [value for _, value in load_documents(text, file="x.yaml", limits=Limits())]
    except Stalled:
        return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_gitward_reads_what_the_kubernetes_toolchain_reads(tmp_path, case):
    """Accepted by kustomize means accepted by gitward, with the same objects; refused by one means refused by both."""
    text = CASES[case]
    expected = oracle(tmp_path, text)
    assert ours(text) == expected, (case, expected)


def test_the_oracle_is_not_trivial(tmp_path):
    """The cases include both answers: most are accepted, at least one is refused by kustomize itself."""
    answers = {}
    for case, text in CASES.items():
        directory = tmp_path / case.replace(" ", "-")
        directory.mkdir()
        answers[case] = oracle(directory, text)
    assert sum(answer is None for answer in answers.values()) >= 1
    assert sum(answer is not None for answer in answers.values()) >= 10
