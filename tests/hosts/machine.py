"""Fresh Debian 12 test hosts on this machine: systemd as PID 1, sshd, a file system each.

One module builds, boots, runs in and tears down a host::

    with booted("h1", "127.0.0.11") as host:
        host.run("apt-get install -y make")

* :func:`build_base` debootstraps a minimal Debian 12 root file system once and keeps
  it under :data:`STATE_DIR`, named by a hash of its recipe (packages, mirror and the
  files carried over from this machine), so a changed recipe builds a new base.
* :func:`booted` copies the base for one host, boots it with ``systemd-nspawn -b``
  (``--register=no``: this machine has no systemd to register with) and waits until
  systemd says it is running; leaving the block powers it off and deletes its files.
* :meth:`Host.run` runs a shell command inside with ``nsenter`` into the host's
  namespaces.
* :func:`fleet` boots several hosts at once. Every host has an operator account,
  :data:`SSH_USER`, with passwordless sudo and this machine's :func:`control_key` in
  its authorized_keys (root cannot log in over SSH), and :func:`known_hosts` writes
  each host's own keys, so SSH from here checks them strictly.

The hosts share this machine's network namespace: every listener of a host must
bind to that host's own loopback address (each host's sshd listens on its
``address`` only), and nothing on this machine may hold the same port on the same
address. A host reaches the package registries as this machine does, because the
base carries this machine's extra CA certificates, apt sources and network settings,
and its system-wide pip configuration.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Where bases and hosts live (root-owned, outside the checkout).
STATE_DIR = Path(os.environ.get("DONNADB_TESTHOSTS_DIR", "/var/lib/donnadb-testhosts"))
SUITE = "bookworm"
#: The base: what a minimal Debian 12 server has (systemd, sshd), and no more.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2",
            "ca-certificates", "sudo")
#: Bumped when the build steps below change in a way the hashed inputs do not show.
RECIPE_VERSION = "1"
#: What the control machine needs to build and boot hosts (Debian packages).
TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
         "nsenter": "util-linux"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: apt settings about reaching the archive (proxies, TLS, validity of Release files).
APT_NETWORK = re.compile(r"Acquire::(https?|ftp|Check-|Max-ValidTime|Retries|ForceIPv)")
#: The operator account on every host: logs in with the control key, sudo without password.
SSH_USER = "deploy"
#: systemd's exit status for a process it could not move into its unit's cgroup.
CGROUP_EXIT_STATUS = "219"
CGROUP_RETRIES = 3
BOOT_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
#: A clean environment for commands run inside (nothing of the caller's leaks in).
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "USER": "root",
            "DEBIAN_FRONTEND": "noninteractive"}


class HostError(RuntimeError):
    """A test host could not be built, booted or used (the message says which step)."""


# ----------------------------------------------------------------------------- base


def carried_files() -> list[Path]:
    """This machine's files a host needs to reach the registries the same way.

    Extra CA certificates, apt sources and apt network settings (files that set
    ``Acquire::`` options: proxies, validity checks), and the system-wide pip
    configuration. Per-user pip settings are left behind: they point at this
    machine's own directories.
    """
    found: list[Path] = []
    found += sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    found += [p for p in (Path("/etc/apt/sources.list"),) if p.is_file()]
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    found += [p for p in sorted(Path("/etc/apt/apt.conf.d").glob("*"))
              if p.is_file() and APT_NETWORK.search(p.read_text(errors="replace"))]
    found += [p for p in (Path("/etc/pip.conf"),) if p.is_file()]
    found += sorted(p for p in Path("/etc/xdg/pip").glob("*") if p.is_file())
    return found


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses for ``SUITE`` (not the security one)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(_deb822_fields(stanza))
            suites = fields.get("Suites", "").split()
            if (SUITE in suites and "deb" in fields.get("Types", "").split()
                    and "main" in fields.get("Components", "").split()):
                return fields.get("URIs", DEFAULT_MIRROR).split()[0]
    lists = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return DEFAULT_MIRROR


def _deb822_fields(stanza: str) -> Iterator[tuple[str, str]]:
    for line in stanza.splitlines():
        if line and not line.startswith(("#", " ", "\t")) and ":" in line:
            key, value = line.split(":", 1)
            yield key.strip(), value.strip()


def recipe_key(mirror: str, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, mirror, *PACKAGES):
        digest.update(part.encode() + b"\0")
    for path in files:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def check_tools() -> None:
    """:raises HostError: not root, or a tool is missing (names the package to install)."""
    if os.geteuid() != 0:
        raise HostError("test hosts need root (debootstrap, systemd-nspawn); run as root")
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise HostError(f"missing tools for test hosts; install them with: "
                        f"apt-get install -y {' '.join(sorted(set(missing)))}")


def build_base(*, log=sys.stderr) -> Path:
    """The cached base root file system for this recipe, built first if needed.

    Built into a temporary directory and renamed into place, under a lock, so a run
    killed half-way or two runs at once never leave a half-built base in use. Bases
    of older recipes are removed.

    :raises HostError: a tool is missing or debootstrap failed (its log is kept).
    """
    check_tools()
    files = carried_files()
    mirror = debian_mirror()
    base = STATE_DIR / f"base-{recipe_key(mirror, files)}"
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(STATE_DIR / "base.lock"):
        if base.is_dir():
            return base
        tmp = STATE_DIR / f"building-{base.name}"
        _remove_tree(tmp)
        build_log = STATE_DIR / "debootstrap.log"
        print(f"test hosts: building the Debian {SUITE} base from {mirror} "
              f"(about a minute, once)", file=log, flush=True)
        with build_log.open("w") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 SUITE, str(tmp), mirror], stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise HostError(f"debootstrap failed (exit {done.returncode}); "
                            f"see {build_log}")
        _carry_over(tmp, files)
        for old in STATE_DIR.glob("base-*"):
            if old.is_dir():
                _remove_tree(old)
        tmp.rename(base)
    return base


def _carry_over(root: Path, files: list[Path]) -> None:
    """Copy this machine's registry settings in, and make the base a neutral template."""
    if any(p.match("sources.list.d/*") or p.name == "sources.list" for p in files):
        # This machine's sources replace the one line debootstrap wrote.
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
    for path in files:
        dest = root / path.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    subprocess.run(["chroot", str(root), "update-ca-certificates"], check=True,
                   capture_output=True)
    # Each host gets its own identity: machine id at boot, ssh host keys per copy.
    (root / "etc/machine-id").write_text("")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()


# ----------------------------------------------------------------------------- hosts


@dataclass
class Host:
    """One booted test host. ``address`` is the loopback address its sshd listens on."""

    name: str
    address: str
    root: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def leader(self) -> int:
        """PID (on this machine) of the host's init, the child of systemd-nspawn."""
        if self.process is None:
            raise HostError(f"host {self.name} is not booted")
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        if not pids:
            raise HostError(f"host {self.name}: systemd-nspawn has no init process "
                            f"(see {self.console_log})")
        return int(pids[0])

    @property
    def console_log(self) -> Path:
        return self.root.parent / f"{self.name}.console"

    def command(self, script: str, *, cwd: str = "/root") -> list[str]:
        """argv that runs ``script`` (sh) inside the host, as root, in ``cwd``."""
        env = [f"{k}={v}" for k, v in HOST_ENV.items()]
        return ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i", *env,
                "/bin/sh", "-c", f"cd {cwd} && {script}"]

    def run(self, script: str, *, cwd: str = "/root", check: bool = True,
            timeout: float | None = 600, capture: bool = True) -> subprocess.CompletedProcess:
        """Run ``script`` inside; its output is captured unless ``capture`` is False.

        :raises HostError: ``check`` and the command exited non-zero.
        """
        done = subprocess.run(self.command(script, cwd=cwd), capture_output=capture,
                              text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            detail = (done.stdout or "")[-2000:] + (done.stderr or "")[-2000:]
            raise HostError(f"host {self.name}: `{script}` exited {done.returncode}\n{detail}")
        return done

    def start_unit(self, unit: str, *, check: bool = True,
                   timeout: float | None = 900) -> subprocess.CompletedProcess:
        """``systemctl start unit``; started again (at most :data:`CGROUP_RETRIES` times)
        when systemd could not put its process into the unit's cgroup.

        That failure (exit status 219, CGROUP) is the test hosts', not the unit's: this
        machine mounts cgroup v1 with no systemd of its own, so systemd inside an nspawn
        host sometimes cannot empty a finished unit's cgroup ("Failed to kill control
        group ...: Input/output error") and the unit's next start cannot join it. A
        systemd that owns the machine, as on a real host, does not meet it.

        :raises HostError: ``check`` and the unit failed for any other reason, or kept
            failing with 219.
        """
        for attempt in range(CGROUP_RETRIES):
            if attempt:
                time.sleep(2)
            done = self.run(f"systemctl start {unit}", check=False, timeout=timeout)
            if done.returncode == 0 or not self._cgroup_failure(unit):
                break
        if check and done.returncode != 0:
            journal = self.run(f"journalctl -u {unit} --no-pager | tail -40", check=False)
            raise HostError(f"host {self.name}: {unit} failed to start\n"
                            f"{journal.stdout[-4000:]}")
        return done

    def _cgroup_failure(self, unit: str) -> bool:
        status = self.run(f"systemctl show -p ExecMainStatus --value {unit}", check=False)
        return status.stdout.strip() == CGROUP_EXIT_STATUS

    def wait_running(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until systemd inside has finished booting; its final state.

        :raises HostError: the host did not finish booting in ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise HostError(f"host {self.name} exited while booting "
                                f"(see {self.console_log})")
            with contextlib.suppress(HostError, subprocess.TimeoutExpired):
                state = self.run("systemctl is-system-running", check=False,
                                 timeout=10).stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.5)
        raise HostError(f"host {self.name} did not finish booting in {timeout:.0f} s "
                        f"(state {state!r}; see {self.console_log})")


    def wait_ssh(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until sshd on ``address`` greets (systemd may call the host running first).

        :raises HostError: no SSH greeting in ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), \
                    socket.create_connection((self.address, 22), timeout=5) as conn:
                conn.settimeout(5)
                if conn.recv(64).startswith(b"SSH-2.0-"):
                    return
            time.sleep(0.5)
        raise HostError(f"host {self.name}: sshd on {self.address}:22 did not answer in "
                        f"{timeout:.0f} s (see {self.console_log})")


def prepare_root(base: Path, name: str, address: str) -> Path:
    """A fresh copy of ``base`` for one host: its hostname, ssh keys, sshd address."""
    root = STATE_DIR / "hosts" / name
    stop_stale(root)
    _remove_tree(root)
    root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)
    (root / "etc/hostname").write_text(f"{name}\n")
    hosts = (root / "etc/hosts")
    hosts.write_text(f"127.0.0.1\tlocalhost\n{address}\t{name}\n"
                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
    subprocess.run(["chroot", str(root), "ssh-keygen", "-A"], check=True, capture_output=True)
    sshd = root / "etc/ssh/sshd_config.d/donna-testhost.conf"
    sshd.write_text(f"# This test host's own loopback address: hosts share the network.\n"
                    f"ListenAddress {address}\nPermitRootLogin no\n")
    _add_operator(root)
    # Debian's package would create and start a cluster on localhost:5432 before the
    # deploy configures it, and localhost is shared by every host here; the deploy
    # creates the cluster itself (provision/service.py cluster_created).
    conf = root / "etc/postgresql-common/createcluster.d/donnadb-testhost.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("# Test host: the deploy creates the cluster.\ncreate_main_cluster = false\n")
    # Debian's daily apt runs would hold apt's locks while the deploy installs packages
    # (seen at boot); a test host does without them.
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        unit = root / "etc/systemd/system" / timer
        unit.unlink(missing_ok=True)
        unit.symlink_to("/dev/null")
    # systemd-tmpfiles writes /run/nologin at boot and systemd-user-sessions removes it;
    # when that unit fails (seen on a loaded machine), sshd refuses the operator's login
    # until the test gives up. A test host never needs the boot-time lock-out.
    nologin = root / "etc/tmpfiles.d/systemd-nologin.conf"
    nologin.parent.mkdir(parents=True, exist_ok=True)
    nologin.unlink(missing_ok=True)
    nologin.symlink_to("/dev/null")
    return root


def _add_operator(root: Path) -> None:
    """:data:`SSH_USER`: a login with the control key and passwordless sudo, as a cloud
    image's default user has."""
    subprocess.run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash",
                    SSH_USER], check=True, capture_output=True)
    ssh_dir = root / "home" / SSH_USER / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    public = control_key(root).with_suffix(".pub").read_text()
    (ssh_dir / "authorized_keys").write_text(public)
    (ssh_dir / "authorized_keys").chmod(0o600)
    subprocess.run(["chroot", str(root), "chown", "-R", f"{SSH_USER}:{SSH_USER}",
                    f"/home/{SSH_USER}/.ssh"], check=True, capture_output=True)
    sudoers = root / "etc/sudoers.d" / f"donnadb-{SSH_USER}"
    sudoers.write_text(f"{SSH_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)


def control_key(root: Path) -> Path:
    """This machine's private key for the hosts (made once, 0600, under STATE_DIR).

    Made with the ssh-keygen of a host's root file system (``root``), so this machine
    needs no SSH tools of its own.
    """
    key = STATE_DIR / "ssh" / "id_ed25519"
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Under a lock: CI boots the README host while the fleet's hosts are booting.
    with _locked(key.parent / "key.lock"):
        if key.is_file():
            return key
        inside = "/root/donnadb-control-key"
        subprocess.run(["chroot", str(root), "ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                        "-C", "donnadb-test-control", "-f", inside], check=True,
                       capture_output=True)
        made = root / inside.lstrip("/")
        # The public half first: a key file seen by another run is always complete.
        shutil.move(made.with_suffix(".pub"), key.with_suffix(".pub"))
        made.chmod(0o600)
        shutil.move(made, key)
    return key


def known_hosts(hosts: list[Host], name: str = "known_hosts") -> Path:
    """A known_hosts file (``name`` under the state directory's ssh/) with every host key
    of ``hosts``, by address (strict checking)."""
    path = STATE_DIR / "ssh" / name
    lines = []
    for host in hosts:
        for pub in sorted((host.root / "etc/ssh").glob("ssh_host_*_key.pub")):
            kind, blob = pub.read_text().split()[:2]
            lines.append(f"{host.address} {kind} {blob}\n")
    path.write_text("".join(lines))
    return path


@contextlib.contextmanager
def booted(name: str, address: str, *, keep: bool = False) -> Iterator[Host]:
    """A freshly booted host for the block; powered off and deleted afterwards.

    :raises HostError: building, copying or booting failed.
    """
    with fleet([(name, address)], keep=keep) as hosts:
        yield hosts[0]


@contextlib.contextmanager
def fleet(specs: list[tuple[str, str]], *, keep: bool = False) -> Iterator[list[Host]]:
    """Several fresh hosts (``(name, address)`` each), booted side by side.

    :raises HostError: building, copying or booting one of them failed (all stop).
    """
    base = build_base()
    hosts = [Host(name, address, prepare_root(base, name, address)) for name, address in specs]
    try:
        for host in hosts:
            _start(host)
        for host in hosts:
            host.wait_running()
            host.wait_ssh()
        yield hosts
    finally:
        for host in hosts:
            shutdown(host)
        if not keep:
            for host in hosts:
                _remove_tree(host.root)


def _start(host: Host) -> None:
    with host.console_log.open("w") as console:
        host.process = subprocess.Popen(
            ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--console=read-only",
             "-D", str(host.root), "--machine", host.name, "-b"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True)


def shutdown(host: Host, timeout: float = STOP_TIMEOUT) -> None:
    """Power the host off (SIGTERM makes nspawn ask systemd to halt), then kill it."""
    process = host.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def stop_stale(root: Path, *, timeout: float = STOP_TIMEOUT, log=sys.stderr) -> list[int]:
    """Stop every ``systemd-nspawn`` still running the host in ``root``; their PIDs.

    A run killed before its clean-up leaves its hosts running: each holds its
    directory's lock (the next boot fails with "Directory tree ... is currently busy")
    and its sshd the host's address. Each is powered off as :func:`shutdown` does
    (SIGTERM); one still up after ``timeout`` seconds loses its init (which ends every
    process of the host), then itself.
    """
    stale = [pid for pid, argv in _processes() if _runs_root(argv, root)]
    for pid in stale:
        print(f"test hosts: {root.name} is still running from an earlier run (pid {pid}): "
              "powering it off", file=log)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not _wait_gone(stale, timeout):
        for pid in stale:
            for victim in (*_children(pid), pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        if not _wait_gone(stale, 10):
            raise HostError(f"host {root.name}: systemd-nspawn {stale} from an earlier run "
                            "survived SIGKILL; stop it by hand")
    return stale


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (entry / "cmdline").read_bytes()
                yield int(entry.name), raw.decode(errors="replace").split("\0")


def _runs_root(argv: list[str], root: Path) -> bool:
    """``argv`` is a systemd-nspawn (run directly or by an interpreter) of ``root``."""
    if not any(Path(arg).name == "systemd-nspawn" for arg in argv[:2]):
        return False
    dirs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-D", "--directory")]
    return any(Path(d).resolve() == root.resolve() for d in dirs)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(child) for child in path.read_text().split()]
    return []


def _wait_gone(pids: list[int], timeout: float) -> bool:
    """Whether every one of ``pids`` ended (a zombie has) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return not alive
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _remove_tree(path: Path) -> None:
    """Delete a host or base directory; only ever one under STATE_DIR."""
    if STATE_DIR.resolve() not in path.resolve().parents:
        raise HostError(f"refusing to delete {path}: not under {STATE_DIR}")
    if path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
