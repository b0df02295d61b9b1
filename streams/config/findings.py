"""The problems found in one configuration document, and the places they are about.

A problem is kept as (location, message) and rendered at the end, so a path can show the name
of the item it is in (`eventHandlers[0](name=orders).condition`) once the data is known.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from typing import Any

from streams.config.messages import Loc

#: Sections whose items have a name, and what the items are called in messages.
NAMED_SECTIONS = {"integrations": "integration", "targets": "target", "eventHandlers": "handler"}


@dataclass
class Findings:
    """The (resolved) data of one file and the problems found in it so far."""

    file: str
    data: dict[str, Any] = field(default_factory=dict)
    # a location of None means the message is already a whole line (from compile_handler)
    problems: list[tuple[Loc | None, str]] = field(default_factory=list)
    # locations whose value came from a reference: a name there is not shown in paths
    referenced: Container[Loc] = field(default_factory=set)

    def where(self, loc: Loc) -> str:
        """`FILE: a.b[0](name=x).c` for a location in the data."""
        return f"{self.file}: {self.path(loc)}" if loc else self.file

    def path(self, loc: Loc) -> str:
        """`eventHandlers[0](name=orders).condition`: indexes, plus the item's name if known."""
        text = ""
        for depth, part in enumerate(loc):
            if isinstance(part, int):
                text += f"[{part}]"
                if depth == 1:
                    text += self._name_suffix(loc[0], part)
            else:
                text += f".{part}" if text else str(part)
        return text

    def _name_suffix(self, section: Any, index: int) -> str:
        items = self.data.get(section) if section in NAMED_SECTIONS else None
        if not isinstance(items, list) or not 0 <= index < len(items):
            return ""
        item = items[index]
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name or (section, index, "name") in self.referenced:
            return ""
        return f"(name={name})"

    def add(self, loc: Loc, message: str) -> None:
        self.problems.append((loc, message))

    def items(self, section: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """The mappings of a list section, with their indexes (anything else is skipped)."""
        items = self.data.get(section)
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    yield i, item
