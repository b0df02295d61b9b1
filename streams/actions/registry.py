"""The action registry: action name → its renderer (source side) and delivery (sink side).

To add an action type, write its module (a `Params` model, a `Renderer` subclass and a
`Delivery`) and register it here, one line.
"""

from __future__ import annotations

from typing import Any

from streams.actions import conductor, ilert, publish, webhook
from streams.actions.base import Delivery, Renderer

_RENDERERS: dict[str, type[Renderer[Any]]] = {}
_DELIVERIES: dict[str, Delivery] = {}


def register(renderer: type[Renderer[Any]], delivery: Delivery) -> None:
    """Make an action type available to configurations (and the sink) under its `name`."""
    _RENDERERS[renderer.name] = renderer
    _DELIVERIES[renderer.name] = delivery


register(ilert.IlertEvent, ilert.IlertEventDelivery())
register(ilert.IlertHeartbeat, ilert.IlertHeartbeatDelivery())
register(webhook.Webhook, webhook.WebhookDelivery())
register(publish.Publish, publish.PublishDelivery())
register(conductor.StartWorkflow, conductor.StartWorkflowDelivery())
register(conductor.CompleteTask, conductor.TaskUpdateDelivery())
register(conductor.FailTask, conductor.TaskUpdateDelivery())
register(conductor.TerminateWorkflow, conductor.TerminateWorkflowDelivery())
register(conductor.UpdateWorkflowVariables, conductor.UpdateWorkflowVariablesDelivery())


def renderer(name: str) -> type[Renderer[Any]] | None:
    """The source side of the action `name`, or None for an unknown action."""
    return _RENDERERS.get(name)


def delivery(name: str) -> Delivery | None:
    """The sink side of the action `name` (`deliver(request, ctx, target)`, `redact(payload)`),
    or None for an unknown action."""
    return _DELIVERIES.get(name)


def names() -> list[str]:
    """Every action name, sorted (as configuration errors list them)."""
    return sorted(_RENDERERS)
