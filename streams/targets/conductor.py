"""Conductor targets: a Conductor (or Orkes) server, with an application key when it has auth.

Without keyId and keySecret Herald talks to an open server; with them it obtains tokens from
`/api/token` (`streams.conductor_auth`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.targets.base import TargetType

if TYPE_CHECKING:
    from streams.config.models import Target


def _check(target: Target) -> None:
    if not target.baseUrl:
        raise ValueError("a conductor target needs baseUrl (https://host or .../api)")
    if bool(target.keyId) != bool(target.keySecret):
        raise ValueError(
            "a conductor target needs both keyId and keySecret, or neither (a server "
            "without authentication)"
        )


CONDUCTOR = TargetType("conductor", _check, own_fields=("keyId", "keySecret"))
