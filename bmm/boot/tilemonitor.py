"""tile-monitor command lines: how the proxy drives a booted Tilera board.

The grammar is the Tilera MDE tool's (the blueprint's proxy used it): a way to reach the board
(`--resume --net <ip>` by default), then actions in order, then `--quit`:

    --run - CMD ARGS... -     run a command on the board ("-" opens and closes it)
    --upload SRC DST          copy a proxy file to the board

Only argv lists are built here; the proxy's executor runs them. A word that is exactly the
delimiter could end a --run early, so it is refused rather than passed on.
"""

from __future__ import annotations

from collections.abc import Sequence

from bmm.errors import BmmError

DELIMITER = "-"


def run(*words: str) -> list[str]:
    if not words or DELIMITER in words:
        raise BmmError("a tile-monitor --run command is empty or contains the word '-'")
    return ["--run", DELIMITER, *words, DELIMITER]


def upload(source: str, dest: str) -> list[str]:
    return ["--upload", source, dest]


class TileMonitor:
    def __init__(self, path: str, connect: Sequence[str]):
        self.path = path
        self.connect = list(connect)

    def argv(self, *actions: list[str]) -> list[str]:
        """tile-monitor <connect> <action>... --quit"""
        out = [self.path, *self.connect]
        for action in actions:
            out += action
        return out + ["--quit"]
