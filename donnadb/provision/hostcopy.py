"""A secret file copied from one host to another over the deploy's own connections.

The content is read on the source host (a pyinfra fact) and written on the target,
0600 from the start: it never touches argv, a log or a file of the machine running
the deploy. Called after the source host's own steps made the file (see the callers).
"""

from __future__ import annotations

import hashlib
from io import StringIO

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.host import Host
from pyinfra.facts.files import FileContents, Sha256File
from pyinfra.operations import files

from donnadb.errors import ConfigError


@operation()
def copied(source: Host | None, source_path: str, dest: str, owner: str):
    """``dest`` (0600 ``owner``) holds the same lines as ``source_path`` on ``source``
    (nothing to do on a host without a ``source``)."""
    if source is None:
        host.noop("this host makes the file itself")
        return
    want = source.get_fact(Sha256File, path=source_path)
    if want is None and host.executing_op_hash is None:
        # Change detection before anything ran: the database host has not made it yet.
        yield f"true  # copy {source.name}:{source_path} once it exists"
        return
    if want is None:
        raise ConfigError(f"{source.name} has no {source_path}; its deploy must run first "
                          "(keep it in the inventory)")
    if host.get_fact(Sha256File, path=dest) == want:
        host.noop(f"{dest} matches {source.name}:{source_path}")
        return
    lines = source.get_fact(FileContents, path=source_path) or []
    content = "".join(f"{line}\n" for line in lines)
    if hashlib.sha256(content.encode()).hexdigest() != want:
        raise ConfigError(f"{source.name}:{source_path} changed while it was read; "
                          "run the deploy again")
    # The file exists, 0600, before the content is copied in (pyinfra copies its upload
    # over it): the password is never in a file others may read.
    yield from files.file._inner(path=dest, user=owner, group=owner, mode="600")
    yield from files.put._inner(src=StringIO(content), dest=dest, user=owner, group=owner,
                                mode="600")
