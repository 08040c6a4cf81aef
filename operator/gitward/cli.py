"""The ``gitward`` command line.

Sub-commands follow kubectl habits; each one is a thin shell over the same
functions the operator uses. The operator itself, status, history, rollback,
verify and diff join here as the pipeline steps behind them land.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import gitward
from gitward.api import conditions, resources


def _version(_args: argparse.Namespace) -> int:
    print(f"gitward {gitward.__version__} (API {resources.API_VERSION})")
    return 0


def _reasons(args: argparse.Namespace) -> int:
    reasons = [r.value for r in conditions.Reason]
    if args.output == "json":
        print(json.dumps(reasons))
    else:
        print("\n".join(reasons))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, separate from :func:`main` so tests can inspect it."""
    parser = argparse.ArgumentParser(
        prog="gitward",
        description="Deploy from Git only what can be proven: allowed branches, signed commits, "
        "validated manifests, isolated tenants, full history.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    version = commands.add_parser("version", help="print the version of gitward and its API")
    version.set_defaults(func=_version)
    reasons = commands.add_parser("reasons", help="list every condition reason gitward reports")
    reasons.add_argument("-o", "--output", choices=["text", "json"], default="text")
    reasons.set_defaults(func=_reasons)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gitward`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
