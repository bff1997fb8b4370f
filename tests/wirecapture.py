"""A sniffed wire for the tests that promise nothing readable crosses it: ``tcpdump`` on
the loopback interface, of the traffic to and from exact endpoints only.

Exact endpoints (address and port, both ways) because a test host carries other
servers on the same ports (the local Patroni cluster's PostgreSQL listens on 5432 of
127.0.0.41-43): their traffic would only fill the kernel's capture buffer. A capture
the kernel dropped packets from proves nothing either way, so it says how many.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

#: tcpdump's capture buffer, KiB (its default is 2 MiB, too small on a busy test host).
BUFFER_KIB = 16384


def endpoint_filter(endpoints: list[tuple[str, int]]) -> str:
    """A pcap filter for TCP segments from or to any of ``endpoints`` (address, port)."""
    return " or ".join(f"(src host {host} and src port {port}) or "
                       f"(dst host {host} and dst port {port})" for host, port in endpoints)


class Capture:
    """``tcpdump -i lo`` of some TCP endpoints into a file, for the length of a ``with``."""

    def __init__(self, path: Path, endpoints: list[tuple[str, int]]) -> None:
        self.path = path
        self.dropped: int | None = None
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-B", str(BUFFER_KIB),
             "-w", str(path), endpoint_filter(endpoints)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Capture:
        # tcpdump says "listening on lo" once its filter is installed; --immediate-mode
        # hands over every packet at once (not in blocks a stop would drop), -U writes it.
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # let the last packets reach the file
        self.proc.send_signal(signal.SIGINT)
        _, stats = self.proc.communicate(timeout=10)
        found = re.search(r"(\d+) packets? dropped by kernel", stats)
        self.dropped = int(found.group(1)) if found else None

    @property
    def complete(self) -> bool:
        """The kernel said it dropped nothing (known only once the ``with`` is over)."""
        return self.dropped == 0

    def wait_for(self, seen: bytes, timeout: float = 15.0) -> None:
        """Until ``seen`` is in the file (a busy host hands packets over late), at most
        ``timeout`` seconds; the caller's assertion then decides."""
        deadline = time.monotonic() + timeout
        while seen not in self.data() and time.monotonic() < deadline:
            time.sleep(0.2)

    def data(self) -> bytes:
        return self.path.read_bytes()
