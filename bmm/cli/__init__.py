"""The `bmm` command: one group per concern, each in its own module."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from bmm import __version__
from bmm.guard import debug, describe_error

# `bmm lab` lives in its own package (lab/, bmm_lab), installed by install.sh unless --no-lab;
# the product never imports it, it is only named here
OPTIONAL = {"lab": "the simulated lab (package bmm-lab, lab/ in bmm's source): ./install.sh without --no-lab"}
GROUPS = {
    "lab": "bmm_lab.cli",
    "nodes": "bmm.cli.nodes",
    "one": "bmm.cli.one",
    "power": "bmm.cli.power",
    "remotes": "bmm.cli.remotes",
    "doctor": "bmm.cli.doctor",
}


class BmmGroup(click.Group):
    """Loads command groups lazily, and turns BmmError into one line on stderr."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(GROUPS))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in GROUPS:
            return cmd
        try:
            module = importlib.import_module(GROUPS[name])
        except ModuleNotFoundError as exc:
            if exc.name != GROUPS[name]:
                raise
            if name in OPTIONAL:
                return _unavailable(name, f"(not installed) {OPTIONAL[name]}.",
                                    f"`bmm {name}` is not installed here: {OPTIONAL[name]}")
            return _unavailable(name, f"(not built yet) the `{name}` commands.", f"`bmm {name}` is not built yet")
        return module.cli

    def invoke(self, ctx):
        _log_to_terminal()
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is one line (bmm.guard)
            if debug():
                raise
            click.echo(f"bmm: {describe_error(exc)}", err=True)
            sys.exit(1)


def _log_to_terminal() -> None:
    """A person at the command line sees warnings as `bmm: warning: ...` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bmm: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    if not any(getattr(h, "_bmm_cli", False) for h in root.handlers):
        handler._bmm_cli = True
        root.addHandler(handler)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)


def _unavailable(name: str, help: str, message: str) -> click.Command:
    """A command group that is listed but cannot run here: it says why, whatever it is given."""
    @click.command(name, help=help, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def stub():
        raise click.ClickException(message)

    return stub


@click.group(cls=BmmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmm")
@click.option("--config", "config", metavar="FILE", type=click.Path(dir_okay=False),
              help="bmm.toml to use [env BMM_CONFIG; default: the one in OpenNebula's remotes "
                   "directory, /var/lib/one/remotes/etc/bmm/bmm.toml, else /etc/one/bmm/bmm.toml].")
def main(config):
    """bmm runs OpenNebula instances on bare metal.

    \b
    Command groups:
      lab      a simulated rack on this machine (try `bmm lab demo` first)
      nodes    the inventory: validate, list, show, inspect, import legacy tilera_boards
      one      register the inventory in OpenNebula, reconcile both sides
      power    switch and query node power through BMCs, PDUs and ssh
      remotes  install OpenNebula's driver scripts and print oned.conf blocks
      doctor   check this front-end: tools, config, inventory, BMCs, oned, remotes

    Set BMM_DEBUG=1 for tracebacks.
    """
    if config:
        os.environ["BMM_CONFIG"] = config
