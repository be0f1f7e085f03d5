"""Numbers and locations as OpenNebula writes them into driver argv and XML.

oned prints ids and sizes as plain ASCII decimals. Python's int() is far more lenient: it
takes '٩', '0_9', ' 9', '+9' and '9\\n' as 9, so an id must match exactly the form oned prints
before it is used, and fit SQLite's INTEGER (the state database stores it). Anything else is
refused before any work starts, with a message that says what was expected and never echoes
the input.
"""

from __future__ import annotations

import re

from bmm.errors import InputError

SQLITE_MAX = 2**63 - 1
# A size in MB that no disk reaches (1 EiB): a bound, so arithmetic on it stays sane.
MAX_SIZE_MB = 2**40

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}", re.ASCII)


def parse_id(text: str, what: str) -> int:
    """A non-negative id exactly as oned prints it: ASCII digits, no sign, no leading zero,
    no space, within SQLite's INTEGER range."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise InputError(f"{what} is not a non-negative ASCII decimal number")
    value = int(text)
    if value > SQLITE_MAX:
        raise InputError(f"{what} is larger than {SQLITE_MAX}")
    return value


def parse_size_mb(text: str, what: str = "size") -> int:
    """A disk size in MB: a positive ASCII decimal, at most MAX_SIZE_MB."""
    value = parse_id(text, what)
    if value <= 0:
        raise InputError(f"{what} must be greater than 0 MB")
    if value > MAX_SIZE_MB:
        raise InputError(f"{what} is larger than {MAX_SIZE_MB} MB")
    return value


def split_location(text: str, what: str) -> tuple[str, str]:
    """`host:path`, the form TM arguments name a place in (protocol §8.2). The host is an
    OpenNebula host name; the path is absolute."""
    host, sep, path = text.partition(":")
    if not sep or not _HOST.fullmatch(host) or not path.startswith("/"):
        raise InputError(f"{what} is not <host>:<absolute path>")
    return host, path


def check_host_name(text: str, what: str = "host name") -> str:
    """An OpenNebula host name as bmm's inventory accepts it (no path or shell syntax)."""
    if not isinstance(text, str) or not _HOST.fullmatch(text):
        raise InputError(f"{what} is not a host name (letters, digits, . _ -)")
    return text
