"""What a target type is, apart from the fields every target has.

A target is one flat mapping in the configuration (`streams.config.models.Target`): its fields
are shared, and `type` says which of them it needs. What each type needs lives with the type,
so adding a target type is one module and one registry line, and the configuration format and
its error messages stay those of one model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.config.models import Target


@dataclass(frozen=True, slots=True)
class TargetType:
    """One kind of target.

    `check` raises ValueError saying what a target of this type lacks (its message is the
    configuration error). `own_fields` may be set on targets of this type only: elsewhere they
    would be ignored, which hides a mistake.
    """

    name: str
    check: Callable[[Target], None]
    own_fields: tuple[str, ...] = ()
