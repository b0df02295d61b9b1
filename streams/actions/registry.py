"""The action registry: action name → ActionType."""

from __future__ import annotations

from streams.actions.base import ActionType
from streams.actions.conductor import CONDUCTOR_ACTIONS
from streams.actions.ilert import IlertEvent, IlertHeartbeat
from streams.actions.publish import Publish
from streams.actions.webhook import Webhook

ACTIONS: dict[str, type[ActionType]] = {}


def register(action_type: type[ActionType]) -> type[ActionType]:
    """Make an action type available to configurations under its `name`."""
    ACTIONS[action_type.name] = action_type
    return action_type


for _builtin in (IlertEvent, IlertHeartbeat, Webhook, Publish, *CONDUCTOR_ACTIONS):
    register(_builtin)


def get(name: str) -> type[ActionType] | None:
    return ACTIONS.get(name)
