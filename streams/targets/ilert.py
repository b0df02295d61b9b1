"""ilert targets: ilert's API (`baseUrl`) and the integration key its actions default to."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.targets.base import TargetType

if TYPE_CHECKING:
    from streams.config.models import Target


def _check(target: Target) -> None:
    if not target.baseUrl:
        raise ValueError("an ilert target needs baseUrl (https://api.ilert.com)")


ILERT = TargetType("ilert", _check)
