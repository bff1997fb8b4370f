"""Wait until freshly booted hosts take the control key's login.

sshd greets (what :meth:`tests.hosts.machine.Host.wait_ssh` waits for) a moment before
it lets anyone in on a loaded machine: a login then can end with "transport shut down
or saw EOF", which pyinfra reports as an authentication error and does not retry. The
fleets log in once here, bounded, before the deploy does.
"""

from __future__ import annotations

import sys
import time

import paramiko

from tests.hosts import machine


def connect(address: str, *, key_file: str, known_hosts: str, user: str = machine.SSH_USER,
            **options: float) -> paramiko.SSHClient:
    """An SSH client logged in to ``address`` as ``user`` with the control key, checking
    the host's key strictly (as pyinfra connects); ``options`` go to paramiko's connect
    (its timeouts). The caller closes it.

    :raises paramiko.SSHException: the login was refused.
    """
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(address, username=user, key_filename=key_file, allow_agent=False,
                       look_for_keys=False, **options)
    except BaseException:
        client.close()
        raise
    return client


def wait_for_logins(hosts: list[machine.Host], *, key_file: str, known_hosts: str,
                    user: str = machine.SSH_USER, timeout: float = 120.0) -> None:
    """Log in to each host as ``user`` and run ``true``, retrying for ``timeout`` s.

    :raises HostError: a host still refuses after ``timeout`` seconds.
    :raises paramiko.BadHostKeyException: a host's key is not the one booted.
    """
    for host in hosts:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with connect(host.address, key_file=key_file, known_hosts=known_hosts,
                             user=user, timeout=15, banner_timeout=30,
                             auth_timeout=30) as client:
                    _, stdout, _ = client.exec_command("true", timeout=30)
                    stdout.channel.recv_exit_status()
                break
            except paramiko.BadHostKeyException:
                raise
            except (paramiko.SSHException, OSError) as exc:
                if time.monotonic() > deadline:
                    raise machine.HostError(f"host {host.name}: no SSH login as {user} in "
                                            f"{timeout:.0f} s ({exc})") from exc
                print(f"fleet: {host.name} refused a login ({exc}); trying again",
                      file=sys.stderr, flush=True)
                time.sleep(1)
