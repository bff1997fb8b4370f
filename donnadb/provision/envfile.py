"""/etc/donnadb/donnadb.env: the settings donnactl and the application read on the host."""

from __future__ import annotations

import posixpath
from io import StringIO

from pyinfra.api import deploy
from pyinfra.operations import files

from donnadb.config import Settings
from donnadb.provision import bootstrap, consumers, monitoring, tls
from donnadb.provision.settings import DeploySettings


def prometheus_url(settings: DeploySettings) -> str | None:
    """The host's own Prometheus (a single host's deploy runs one), when it is not the
    runtime default; a cluster member has none yet."""
    if settings.ha:
        return None
    url = f"http://{monitoring.listen_address(settings)}:{monitoring.PROMETHEUS_PORT}"
    return None if url == Settings.model_fields["prometheus_url"].default else url


def render_env(settings: DeploySettings) -> str:
    """The file's text for ``settings`` (what the deploy writes, and the tests read)."""
    return bootstrap.render("donnadb.env.j2", cfg=settings, tls=tls,
                            prometheus_url=prometheus_url(settings))


@deploy("Host settings file")
def write_env_file(settings: DeploySettings) -> None:
    directory = posixpath.dirname(settings.donnadb_env_file)
    consumers.settings_dir(f"Create {directory}", directory)
    # No secret inside; the consumers (the donnadb group) read it, nobody else.
    files.put(name=f"Write {settings.donnadb_env_file}", src=StringIO(render_env(settings)),
              dest=settings.donnadb_env_file, user="root", group=consumers.GROUP, mode="640")
