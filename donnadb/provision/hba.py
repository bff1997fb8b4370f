"""pg_hba.conf: scram-sha-256 everywhere but the postgres superuser's peer entries."""

from __future__ import annotations

from pathlib import Path

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from donnadb.provision.settings import DeploySettings

TEMPLATES = Path(__file__).resolve().parent / "templates"


@deploy("Configure pg_hba.conf")
def configure_hba(settings: DeploySettings) -> OperationMeta:
    """Write pg_hba.conf; returns the operation (reload when it changed)."""
    return files.template(
        name="Write pg_hba.conf (scram-sha-256 only, no trust)",
        src=str(TEMPLATES / "pg_hba.conf.j2"),
        dest=f"{settings.conf_dir}/pg_hba.conf",
        user="postgres",
        group="postgres",
        mode="640",
        networks=list(settings.pg_hba_networks),
    )
