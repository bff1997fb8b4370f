"""/etc/donnadb/donnadb.env: the settings donnactl and the application read on the host."""

from __future__ import annotations

import posixpath
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from donnadb.config import Settings
from donnadb.provision import (
    app,
    bootstrap,
    cacheserver,
    consumers,
    dualstats,
    fieldkeys,
    monitoring,
    tls,
)
from donnadb.provision.settings import DeploySettings


def prometheus_url(address: str | None) -> str | None:
    """``address`` (:func:`monitoring.prometheus_address`) unless it is the runtime
    default, which needs no line."""
    return None if address == Settings.model_fields["prometheus_url"].default else address


def render_env(settings: DeploySettings, prometheus: str | None = None,
               dal_env: dict[str, str] | None = None) -> str:
    """The file's text for ``settings`` (what the deploy writes, and the tests read);
    ``prometheus``: the Prometheus `donnactl dashboard` reads; ``dal_env``: the DAL's
    CACHE_* and CRYPTO_* lines (provision/cacheserver.py, fieldkeys.py)."""
    return bootstrap.render("donnadb.env.j2", cfg=settings, tls=tls,
                            prometheus_url=prometheus_url(prometheus),
                            dal_env=dal_env or {}, stats_dir=dualstats.stats_dir(settings))


@deploy("Host settings file")
def write_env_file(settings: DeploySettings) -> None:
    directory = posixpath.dirname(settings.donnadb_env_file)
    consumers.settings_dir(f"Create {directory}", directory)
    # No secret inside; the consumers (the donnadb group) read it, nobody else.
    prometheus = monitoring.prometheus_address(settings, host.inventory, host.data)
    files.put(name=f"Write {settings.donnadb_env_file}",
              src=StringIO(render_env(settings, prometheus,
                                      {**cacheserver.client_env(settings, host),
                                       **fieldkeys.client_env(settings)})),
              dest=settings.donnadb_env_file, user="root", group=consumers.GROUP, mode="640")
    if dualstats.stats_dir(settings) is not None:
        dualstats.make_stats_dir(settings, next(iter(app.app_users(settings))))
