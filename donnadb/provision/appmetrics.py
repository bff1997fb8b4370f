"""An application host's dual-write figures, for Prometheus.

Each DAL process of an application host in dual-write writes its copy figures to
MIGRATION_MIRROR_STATS_DIR (provision/dualstats.py); a database host's metrics job
adds them up with its own. An application host that is not also a database host has
neither, so where its settings put some entity in dual-write it gets (and otherwise
nothing of this):

- ``donnactl`` (the venv holds the ``[ops]`` extra: provision/install.py);
- the metrics job alone, as the ops jobs' user without a passfile, running
  ``donnactl metrics textfile --host-only`` every minute: the storage phases, the
  reconcile backlog and the copy figures of this host, no database read
  (provision/opsjobs.py);
- node_exporter on the host's own address (``app_address``, else its inventory name),
  its textfile collector on that file's directory, TLS only with a client certificate
  of the deploy's CA required, as a database host's exporters are when the monitor is
  another host (provision/monitoring.py); the monitor's Prometheus scrapes it in job
  ``node``, labelled ``role="app"``;
- the rotation of the job's log (provision/logs.py).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from donnadb.provision import dualstats, logs, monitoring, opsjobs, scheduler
from donnadb.provision.app import address_of
from donnadb.provision.settings import DeploySettings


@deploy("Application host: dual-write figures for Prometheus")
def install_app_metrics(settings: DeploySettings) -> None:
    """The metrics job and node_exporter (module docstring), where some entity is in
    dual-write.

    :raises ConfigError: group_data ops_schedule is malformed.
    """
    if dualstats.stats_dir(settings) is None:
        return
    scheduler.ensure_cron(settings)
    opsjobs.install_host_metrics_job(settings)
    monitoring.install_exporters(settings, web_tls=True, address=address_of(host),
                                 packages=(monitoring.NODE_EXPORTER,))
    logs.rotate_logs(settings)
