"""The README's own commands, run as written on a freshly booted Debian 12 host.

``python3 -m tests.hosts readme`` (CI runs it after ``make test``): boot one fresh
host (tests/hosts/machine.py), put a clean clone of this repository at
``/root/donnadb`` inside it, and run, in that clone, every command of the ``sh``
blocks under the README's "Two commands" heading, in order. The first failing
command fails the run with its exit code.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.hosts.machine import HostError, booted

SECTION = "## Two commands"
CLONE = "/root/donnadb"
#: One command of the README may take this long (the whole test suite is one).
COMMAND_TIMEOUT = 45 * 60
#: Ports the README's deploy listens on at 127.0.0.1 (PostgreSQL, PgBouncer): the host
#: shares this machine's network, so they must be free here first.
PORTS = (5432, 6432)
#: The host's own address (its sshd): apart from the fleet's (127.0.0.11-24), which CI
#: runs at the same time.
ADDRESS = "127.0.0.31"


def readme_commands(readme: Path) -> list[str]:
    """Command lines of the ``sh`` blocks in the README's "Two commands" section.

    Comments (``# ...``) are dropped; the rest of each line runs as written.

    :raises HostError: the section or its commands are missing.
    """
    text = readme.read_text()
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        raise HostError(f"{readme} has no '{SECTION}' section")
    section = text[start + 1:]
    following = re.search(r"\n## ", section[len(SECTION):])
    if following:
        section = section[:len(SECTION) + following.start()]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"(^|\s+)#.*$", "", line).strip()
            if command:
                commands.append(command)
    if not commands:
        raise HostError(f"{readme}: no ```sh commands under '{SECTION}'")
    return commands


def busy_ports(address: str = "127.0.0.1", wait: float = 15.0) -> list[int]:
    """:data:`PORTS` still taken on ``address`` after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        busy = []
        for port in PORTS:
            with socket.socket() as probe:
                if probe.connect_ex((address, port)) == 0:
                    busy.append(port)
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.5)


def run_readme(checkout: Path, *, name: str = "readme", address: str = ADDRESS) -> int:
    """Boot a host, clone ``checkout`` into it, run the README's commands; an exit code."""
    commands = readme_commands(checkout / "README.md")
    busy = busy_ports()
    if busy:
        raise HostError(f"ports {busy} are in use on 127.0.0.1, where the host's deploy "
                        f"listens (hosts share this machine's network): stop this "
                        f"machine's PostgreSQL and PgBouncer first")
    with booted(name, address) as host:
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(checkout),
                        str(host.root / CLONE.lstrip("/"))], check=True)
        for command in commands:
            print(f"==> {name}: {command}", flush=True)
            done = host.run(command, cwd=CLONE, check=False, capture=False,
                            timeout=COMMAND_TIMEOUT)
            if done.returncode != 0:
                print(f"==> {name}: `{command}` failed with exit {done.returncode}",
                      file=sys.stderr, flush=True)
                return done.returncode
    print(f"==> {name}: every README command passed on a fresh Debian 12 host", flush=True)
    return 0
