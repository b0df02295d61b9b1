"""The target registry: the `type:` of a target → what that type needs.

To add a target type, write its module (a `TargetType`) and register it here, one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.targets.base import TargetType
from streams.targets.conductor import CONDUCTOR
from streams.targets.ilert import ILERT
from streams.targets.webhook import WEBHOOK

if TYPE_CHECKING:
    from streams.config.models import Target

TARGET_TYPES: dict[str, TargetType] = {}


def register(target_type: TargetType) -> TargetType:
    """Make a target type available to configurations under its `name`."""
    TARGET_TYPES[target_type.name] = target_type
    return target_type


register(ILERT)
register(WEBHOOK)
register(CONDUCTOR)


def names() -> tuple[str, ...]:
    """Every target type, in registration order (as configuration errors list them)."""
    return tuple(TARGET_TYPES)


def check(target: Target) -> None:
    """Raise ValueError when `target` lacks what its type needs, or sets another type's
    own fields."""
    TARGET_TYPES[target.type].check(target)
    for other in TARGET_TYPES.values():
        if other.name != target.type and any(getattr(target, f, None) for f in other.own_fields):
            fields = " and ".join(other.own_fields)
            verb = "is" if len(other.own_fields) == 1 else "are"
            raise ValueError(f"{fields} {verb} for {other.name} targets only")
