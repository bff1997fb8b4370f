"""``donnactl cluster``: the HA cluster's verbs (the drill's lives in :mod:`.drill`)."""

from __future__ import annotations

import typer

from donnadb.cli.drill import drill_cmd

app = typer.Typer(no_args_is_help=True)
cluster_app = app

app.command("drill")(drill_cmd)
