"""The one `module:Class` loader: kinds, power drivers, boot methods and CLI groups are named
this way (bmm.toml `[kinds]` too), and imported only when used."""

from __future__ import annotations

import importlib

from bmm.errors import ConfigError


def load(spec: str, base: type | None = None, *, what: str) -> type:
    """The class spec names ("package.module:Class"); ConfigError when it cannot be imported,
    does not exist, or is not a subclass of base."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"{what}: {spec!r} is not \"package.module:Class\"")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"{what}: module {module_name} is not built yet or not installed") from None
        raise
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or (base is not None and not issubclass(cls, base)):
        kind = f"a {base.__name__}" if base is not None else "a class"
        raise ConfigError(f"{what}: {spec} is not {kind}")
    return cls
