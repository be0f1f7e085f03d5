"""bmm's own configuration (not the node inventory).

OpenNebula runs the remotes with a bare environment, so the remotes find this file relative
to the remotes directory, the way OpenNebula's own drivers find `etc/`:
`<remotes>/etc/bmm/bmm.toml`. The `bmm` command reads the same file: the front-end's remotes
directory (`$ONE_LOCATION/var/remotes` for a self-contained OpenNebula, else
/var/lib/one/remotes), then /etc/one/bmm/bmm.toml. `BMM_CONFIG` (or `bmm --config`) overrides
both, for tests and debugging.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from bmm.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/one/bmm/bmm.toml")
DEFAULT_INVENTORY = Path("/etc/one/bmm/nodes.toml")
DEFAULT_STATE_DB = Path("/var/lib/one/bmm/state.db")


@dataclass(frozen=True)
class Config:
    inventory: Path = DEFAULT_INVENTORY
    state_db: Path = DEFAULT_STATE_DB
    lock_wait_s: float = 30.0
    ssh_wait_s: float = 600.0
    boot_wait_s: float = 900.0
    power_timeout_s: float = 60.0
    monitor_address: str = "127.0.0.1"
    monitor_port: int = 4124
    opennebula_major: int | None = None
    opennebula_var: Path | None = None          # default: the parent of the remotes directory
    datastore_location: Path | None = None      # default: oned's DATASTORE_LOCATION (<var>/config)
    log_file: Path | None = None                # default: bmm.log beside the state database
    kinds: dict = field(default_factory=dict)
    source: Path | None = field(default=None, compare=False)

    @property
    def log_path(self) -> Path:
        return self.log_file or Path(self.state_db).parent / "bmm.log"


_PATH_KEYS = {"inventory", "state_db", "opennebula_var", "datastore_location", "log_file"}


def remotes_config_path(remote_script: str) -> Path:
    """`<remotes>/etc/bmm/bmm.toml` for a script at `<remotes>/<vmm|tm|im>/.../<script>`."""
    here = Path(remote_script).resolve().parent
    for parent in [here, *here.parents]:
        if (parent / "etc" / "bmm").is_dir():
            return parent / "etc" / "bmm" / "bmm.toml"
    return SYSTEM_CONFIG


def frontend_remotes() -> Path:
    """OpenNebula's remotes directory on this front-end."""
    location = os.environ.get("ONE_LOCATION")
    return Path(location) / "var" / "remotes" if location else Path("/var/lib/one/remotes")


def find_config(remote_script: str | None = None) -> Path | None:
    """BMM_CONFIG; else, for a remote, <remotes>/etc/bmm/bmm.toml beside it; else (the bmm
    command) the front-end's remotes' bmm.toml; else /etc/one/bmm/bmm.toml; else None."""
    env = os.environ.get("BMM_CONFIG")
    if env:
        return Path(env)
    if remote_script is not None:
        candidate = remotes_config_path(remote_script)
        if candidate.exists():
            return candidate
    else:
        candidate = frontend_remotes() / "etc" / "bmm" / "bmm.toml"
        if candidate.exists():
            return candidate
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load_config(path: Path | str | None = None, *, remote_script: str | None = None) -> Config:
    """Load the config at path, or the one find_config() locates, or the defaults."""
    path = Path(path) if path else find_config(remote_script)
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    known = {f.name: f for f in fields(Config) if f.name != "source"}
    if not isinstance(data.get("kinds", {}), dict):
        raise ConfigError(f"config file {path}: kinds must be a table of kind = \"python.module:Class\"")
    values = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"config file {path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        if key in _PATH_KEYS:
            value = Path(value)
            if not value.is_absolute():
                value = path.parent / value
        values[key] = value
    return Config(source=path, **values)


def resolve_path(explicit: str | os.PathLike | None, env_var: str, key: str, config: Config | None = None) -> Path:
    """A path setting: an explicit value (a command-line option) wins, then the environment
    variable, then bmm's configuration."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    return Path(getattr(config or load_config(), key))
