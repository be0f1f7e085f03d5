"""`bmm remotes`: install the driver scripts, print or apply OpenNebula's configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bmm import oned_config
from bmm.remotes import install_remotes


@click.group("remotes")
def cli():
    """Install bmm's OpenNebula driver scripts and configure oned and monitord."""


@cli.command("install")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path), default="/var/lib/one/remotes")
@click.option("--python", "python", default=sys.executable, show_default=True,
              help="Interpreter the scripts' shebang points at (bmm's virtualenv).")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The checkout's remotes/ directory (default: next to this bmm).")
def install(dest, python, source):
    """Install vmm/bmm, tm/bmm, im/bmm.d and etc/bmm into DEST (OpenNebula's remotes dir).

    Running it again changes nothing unless bmm changed. An existing etc/bmm/bmm.toml is kept.
    """
    report = install_remotes(dest, python=python, source=source)
    click.echo(f"{dest}: {len(report.written)} written, {len(report.unchanged)} unchanged"
               + (f", kept your {', '.join(report.kept)}" if report.kept else ""))


@cli.command("print-config")
def print_config():
    """Print the oned.conf and monitord.conf blocks bmm needs, and example commands."""
    click.echo(oned_config.print_config(), nl=False)


@cli.command("apply-config")
@click.option("--oned", "oned", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default="/etc/one/oned.conf", show_default=True)
@click.option("--monitord", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default="/etc/one/monitord.conf", show_default=True)
def apply_config(oned, monitord):
    """Insert bmm's blocks into oned.conf and monitord.conf once (between marker comments),
    add bmm to TM_MAD -d and DATASTORE_MAD -s, and keep a backup of each changed file.
    Restart oned afterwards."""
    for path, fn in ((oned, oned_config.apply_oned), (monitord, oned_config.apply_monitord)):
        click.echo(f"{path}: {'updated (backup kept beside it)' if fn(path) else 'already configured'}")
