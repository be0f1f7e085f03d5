"""SCHED_REQUIREMENTS evaluated as OpenNebula's scheduler does, for tests: the lexer of
src/parsers/expr_parser.l and the grammar of src/parsers/expr_bool.y (read from
/var/tmp/one-read/one-7.4.0, not copied): `=` on strings is fnmatch(3) (case-sensitive), `""`
never matches, a missing attribute is false, and `!`, `&` and `|` share one precedence, left
to right.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any, Mapping

_TOKEN = re.compile(r'\s*(?:(?P<float>-?\d+\.\d+)|(?P<int>-?\d+)|(?P<name>[A-Za-z][0-9A-Za-z_]*)'
                    r'|"(?P<str>[^"]*)"|(?P<op>[@!&|=><()*+/^-]))')


def _tokens(text: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"syntax error at {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "int":
            value = int(value)
        elif kind == "float":
            value = float(value)
        elif kind == "str":
            kind, value = "name", (value or None)          # a quoted string is a STRING; "" is NULL
        out.append((kind, value))
    return out


def evaluate(expression: str, host: Mapping[str, Any]) -> bool:
    """Whether a host with these attributes (SYSTEM_HOST plus RUNNING_VMS, ...) matches."""
    tokens = _tokens(expression)
    pos = 0

    def peek(offset: int = 0):
        return tokens[pos + offset] if pos + offset < len(tokens) else (None, None)

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def unary() -> bool:
        if peek() == ("op", "!"):
            take()
            return not unary()
        if peek() == ("op", "("):
            take()
            value = expr()
            if take() != ("op", ")"):
                raise ValueError("expected ')'")
            return value
        return comparison()

    def expr() -> bool:
        value = unary()
        while peek() in (("op", "&"), ("op", "|")):
            op = take()[1]
            right = unary()
            value = (value and right) if op == "&" else (value or right)
        return value

    def comparison() -> bool:
        kind, name = take()
        if kind != "name" or name is None:
            raise ValueError(f"expected an attribute name, got {name!r}")
        op = take()[1]
        if op in ("!", "@"):
            if take()[1] != ("=" if op == "!" else ">"):
                raise ValueError("bad operator")
            op = "!=" if op == "!" else "@>"
        kind, want = take()
        have = host.get(name)
        values = have if isinstance(have, (list, tuple)) else [have]
        if kind in ("int", "float"):
            try:
                numbers = [(int if kind == "int" else float)(v) for v in values if v is not None]
            except ValueError:
                return False
            if op == "@>":
                return want in numbers
            if not numbers:
                return False
            n = numbers[0]
            return {"=": n == want, "!=": n != want, ">": n > want, "<": n < want}[op]
        if want is None or have is None:
            return False
        if op == "@>":
            return any(fnmatchcase(str(v), want) for v in values)
        if op not in ("=", "!="):
            raise ValueError(f"{op} on strings")
        matched = fnmatchcase(str(values[0]), want)
        return matched if op == "=" else not matched

    result = expr()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r}")
    return result
