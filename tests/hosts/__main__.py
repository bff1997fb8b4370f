"""``python3 -m tests.hosts build|readme``: the test-host tools (stdlib only, as root)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.hosts.machine import HostError, build_base
from tests.hosts.readme import run_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.hosts")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find) the cached Debian 12 base")
    readme = sub.add_parser("readme", help="run the README's commands on a fresh host")
    readme.add_argument("checkout", nargs="?", default=".", type=Path,
                        help="the git checkout to clone into the host (default: .)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build_base())
            return 0
        return run_readme(args.checkout.resolve())
    except HostError as exc:
        print(f"test hosts: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
