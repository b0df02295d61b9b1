"""The worker's plain counters, shown on /herald/stats; cheap enough for the hot path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counters:
    consumed: int = 0
    matched: int = 0
    actions_produced: int = 0
    dead_lettered: int = 0
    delivered: int = 0
    skipped_duplicates: int = 0
    retries: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)
