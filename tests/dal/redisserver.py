"""A throwaway redis-server for the cache tests: 127.0.0.1 on a free port, ACL users
whose passwords are only in its 0600 config file (argv holds the file's path alone),
killed at the end. Debian's redis-server package provides the binary (the system
service is never started)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from donnadb.config import CACHE_REDIS_ACL

REDIS_SERVER = "/usr/bin/redis-server"
#: What the DAL's user may do: the ACL the deploy writes too.
APP_ACL = CACHE_REDIS_ACL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    root: Path
    port: int = field(default_factory=free_port)
    app_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def password_file(self) -> Path:
        return self.root / "app.password"

    def write_files(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = self.root / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                f"bind 127.0.0.1\nport {self.port}\nprotected-mode yes\n"
                f"dir {self.root}\nsave \"\"\nappendonly no\ndaemonize no\n"
                f"logfile {self.root / 'redis.log'}\n"
                "user default off\n"
                f"user donnadb on >{self.app_password} {APP_ACL}\n"
                f"user admin on >{self.admin_password} ~* &* +@all\n")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.app_password + "\n")

    def start(self) -> None:
        """Start (or restart) the server on the same port and wait until it answers."""
        self.write_files()
        self.proc = subprocess.Popen([REDIS_SERVER, str(self.root / "redis.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.admin().ping()
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start: "
                                       + (self.root / "redis.log").read_text()[-2000:]) from None
                time.sleep(0.05)

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, username="admin",
                           password=self.admin_password, socket_timeout=2)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        self.admin().flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def cache_settings(settings, server: RedisServer, **extra):
    """``settings`` with the cache on, pointing at ``server``."""
    return settings.model_copy(update={
        "cache_enabled": True, "cache_url": server.url, "cache_username": "donnadb",
        "cache_password_file": server.password_file, **extra})
