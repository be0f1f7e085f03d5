"""OpenNebula template syntax: `KEY=VALUE` and `KEY=[A="x",B="y"]`.

OpenNebula's lexer (src/parsers/template_parser.l) reads a double-quoted value as any run of
characters other than `"`, where `\\"` stands for a quote, and the parser turns only `\\"` back
into `"`. Newlines and other backslashes pass through as they are. A backslash right before a
quote or at the very end of a value cannot be written unambiguously in that syntax (the lexer
would take it for an escaped quote), so such a backslash is written as U+29F5 (⧵) instead;
everything else round-trips exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from bmm.errors import BmmError

_KEY = re.compile(r"^[A-Za-z0-9_]+$")
SAFE_BACKSLASH = "\u29f5"


def _check_key(key: str) -> str:
    if not _KEY.match(key):
        raise BmmError(f"{key!r} is not a valid OpenNebula template attribute name")
    return key


def quote(value) -> str:
    """A double-quoted template value."""
    if isinstance(value, bool):
        text = "YES" if value else "NO"
    else:
        text = str(value)
    text = re.sub(r'\\(?=")', SAFE_BACKSLASH, text)
    if text.endswith("\\"):
        text = text[:-1] + SAFE_BACKSLASH
    return '"' + text.replace('"', '\\"') + '"'


def single(key: str, value) -> str:
    return f"{_check_key(key)}={quote(value)}"


def vector(key: str, attrs: Mapping[str, object] | Iterable[tuple[str, object]]) -> str:
    items = attrs.items() if isinstance(attrs, Mapping) else attrs
    body = ",".join(f"{_check_key(k)}={quote(v)}" for k, v in items)
    return f"{_check_key(key)}=[{body}]"


def render(pairs: Iterable[tuple[str, object]]) -> str:
    """Lines of a template. A value that is a Mapping becomes a vector attribute; a list of
    Mappings becomes repeated vector attributes; anything else a single attribute."""
    lines = []
    for key, value in pairs:
        if isinstance(value, Mapping):
            lines.append(vector(key, value))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            lines.extend(vector(key, v) for v in value)
        elif isinstance(value, (list, tuple)):
            lines.append(single(key, ",".join(str(v) for v in value)))
        else:
            lines.append(single(key, value))
    return "\n".join(lines) + ("\n" if lines else "")


# -- decoding, as OpenNebula's lexer and parser do; used by the monitord emulation in tests
#    and by `bmm` tools that read what they wrote.

_TOKEN = re.compile(
    r"""
    (?P<comment>[ \t]*\#[^\n]*\n)
  | (?P<ws>[ \t\n]+)
  | (?P<var>[A-Za-z0-9_]+)
  | (?P<eq>[ \t]*=[ \t]*)
  | (?P<comma>[ \t\n]*,[ \t\n]*)
  | (?P<cbr>[ \t\n]*\][ \t\n]*)
    """,
    re.VERBOSE,
)
_QUOTED = re.compile(r'"((?:[^"\\]|\\"|\\(?!"))*)"', re.DOTALL)
_BARE = re.compile(r"[^=#\s,\[\]]+")


def _value(text: str, pos: int) -> tuple[str | None, int]:
    """Return (value, new_pos); value None means an opening bracket was read."""
    m = re.compile(r"[ \t]*\[[ \t\n]*").match(text, pos)
    if m:
        return None, m.end()
    if text.startswith('"', pos):
        m = _longest_quoted(text, pos)
        if m is None:
            raise BmmError(f"unterminated quoted value at offset {pos}")
        raw, end = m
        return raw.replace('\\"', '"'), end
    m = _BARE.match(text, pos)
    if not m:
        return "", pos
    return m.group(0), m.end()


def _longest_quoted(text: str, pos: int) -> tuple[str, int] | None:
    """flex takes the longest match of `"([^"]|\\")*"`: the closing quote is the last quote
    reachable without crossing an unescaped quote."""
    i = pos + 1
    best = None
    while i < len(text):
        ch = text[i]
        if ch == '"':
            best = (text[pos + 1:i], i + 1)
            if text[i - 1] != "\\":
                break
            i += 1
            continue
        i += 1
    return best


def parse(text: str) -> list[tuple[str, str | dict[str, str]]]:
    """Parse template text into (key, value) pairs; vector values become dicts."""
    out: list[tuple[str, str | dict[str, str]]] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if not m:
            raise BmmError(f"template syntax error at offset {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup in ("comment", "ws"):
            continue
        if m.lastgroup != "var":
            raise BmmError(f"template syntax error at offset {m.start()}: expected a name")
        key = m.group("var")
        m = re.compile(r"[ \t]*=[ \t]*").match(text, pos)
        if not m:
            raise BmmError(f"template syntax error after {key}: expected '='")
        pos = m.end()
        value, pos = _value(text, pos)
        if value is not None:
            out.append((key, value))
            continue
        vec: dict[str, str] = {}
        while True:
            m = re.compile(r"[ \t\n]*").match(text, pos)
            pos = m.end()
            if text.startswith("]", pos):
                pos += 1
                break
            m = re.compile(r"[A-Za-z0-9_]+").match(text, pos)
            if not m:
                raise BmmError(f"template syntax error in {key}=[...] at offset {pos}")
            sub = m.group(0)
            pos = m.end()
            m = re.compile(r"[ \t]*=[ \t]*").match(text, pos)
            if not m:
                raise BmmError(f"template syntax error in {key}=[...]: expected '=' after {sub}")
            pos = m.end()
            val, pos = _value(text, pos)
            if val is None:
                raise BmmError(f"template syntax error: nested vector in {key}")
            vec[sub] = val
            m = re.compile(r"[ \t\n]*,[ \t\n]*").match(text, pos)
            if m:
                pos = m.end()
        out.append((key, vec))
    return out
