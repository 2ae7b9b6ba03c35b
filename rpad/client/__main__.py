"""``python -m rpad.client`` (and the ``rpad-agent.pyz`` zipapp that ``rpad build-agent`` makes):
the programs that run on monitored hosts, without the server's dependencies."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import agent, watch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpad-agent",
                                     description="rpad's agent and watch client")
    parser.add_argument("--version", action="version", version=f"rpad-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    agent.add_parser(sub)
    watch.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
