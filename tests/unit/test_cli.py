"""The gitward command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gitward import cli
from gitward.api.conditions import Reason


def test_help_lists_the_commands():
    """`gitward --help` exits 0 and names its sub-commands."""
    result = subprocess.run(
        [sys.executable, "-m", "gitward.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "version" in result.stdout
    assert "reasons" in result.stdout


def test_console_script_is_installed():
    """The `gitward` console script is on PATH in the project's environment."""
    installed = Path(sys.executable).parent / "gitward"
    script = subprocess.run([str(installed), "version"], capture_output=True, text=True, check=False)
    assert script.returncode == 0
    assert "gitward.dev/v1alpha1" in script.stdout


def test_reasons_as_json(capsys):
    """`gitward reasons -o json` prints every declared reason, machine-readable."""
    assert cli.main(["reasons", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [r.value for r in Reason]


def test_unknown_command_fails():
    """An unknown sub-command is a usage error, not a silent success."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["frobnicate"])
    assert exited.value.code == 2
