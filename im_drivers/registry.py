"""The HostReport class for a node's kind."""

from __future__ import annotations

import importlib

from bmm.errors import ConfigError
from im_drivers.report import HostReport

BUILTIN_REPORTS = {
    "localdisk": "im_drivers.report:HostReport",
    "netboot": "im_drivers.report:HostReport",
}


def report_class(kind: str, config) -> type[HostReport]:
    spec = BUILTIN_REPORTS.get(kind)
    extra = config.kinds.get(kind)
    if isinstance(extra, dict):
        spec = extra.get("im", spec or "im_drivers.report:HostReport")
    elif extra is not None:
        spec = spec or "im_drivers.report:HostReport"
    if spec is None:
        raise ConfigError(f"kind {kind!r} has no monitoring report (known: {', '.join(sorted(BUILTIN_REPORTS))})")
    module_name, _, class_name = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, HostReport)):
        raise ConfigError(f"kind {kind!r}: {spec} is not a HostReport")
    return cls
