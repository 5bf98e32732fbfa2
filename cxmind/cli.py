"""The ``cxmind`` command."""

from __future__ import annotations

import argparse
import sys

from cxmind import __version__

_NOT_YET = (
    "cxmind {command}: not yet available in cxmind {version}. This release ships the interleaved "
    "format (cxmind.format), the finding vocabulary (cxmind.vocab), the CuRL-VPR rewards "
    "(cxmind.rewards) and the offline tiny model (cxmind.testing); data building, training, "
    "evaluation and the end-to-end demo follow."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxmind",
        description="Train chest X-ray vision-language models with interleaved reasoning (CX-Mind) on TRL.",
    )
    parser.add_argument("--version", action="version", version=f"cxmind {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="run the CPU demo: tiny model, phantom data, SFT -> GRPO -> evaluation")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(_NOT_YET.format(command=args.command, version=__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
