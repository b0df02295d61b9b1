"""Webhook targets: the URL (or base URL) a webhook action calls, with shared headers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.targets.base import TargetType

if TYPE_CHECKING:
    from streams.config.models import Target


def address(target: Target) -> str | None:
    """The URL a webhook action's own `url` is joined to (or which it calls when it has none)."""
    return target.url or target.baseUrl


def _check(target: Target) -> None:
    if not address(target):
        raise ValueError("a webhook target needs url")


WEBHOOK = TargetType("webhook", _check)
