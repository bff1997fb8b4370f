"""/etc/donnadb/donnadb.env: the settings donnactl and the application read on the host."""

from __future__ import annotations

import posixpath
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.operations import files

from donnadb.provision import consumers, tls
from donnadb.provision.settings import DeploySettings

TEMPLATES = Path(__file__).resolve().parent / "templates"


@deploy("Host settings file")
def write_env_file(settings: DeploySettings) -> None:
    directory = posixpath.dirname(settings.donnadb_env_file)
    consumers.settings_dir(f"Create {directory}", directory)
    # No secret inside; the consumers (the donnadb group) read it, nobody else.
    files.template(name=f"Write {settings.donnadb_env_file}",
                   src=str(TEMPLATES / "donnadb.env.j2"), dest=settings.donnadb_env_file,
                   user="root", group=consumers.GROUP, mode="640", cfg=settings, tls=tls)
