"""Conductor's event-handler actions, delivered over Conductor's REST API.

Conductor runs these actions in-process (`SimpleActionProcessor`); Herald runs them against a
Conductor server named by a `conductor` target, with the same parameter names and templating
(each action a renderer, e.g. `StartWorkflow`, and a delivery, e.g. `StartWorkflowDelivery`):

- `start_workflow`: start `name`/`version` with the templated `input` and `correlationId`,
  adding `conductor.event.messageId` and `conductor.event.name` to the input, as Conductor does.
  `POST /api/workflow` (a StartWorkflowRequest); Conductor answers with the workflow id.
- `complete_task`, `fail_task`: find the task by `taskId`, else by `workflowId` + `taskRefName`
  (of a loop task, the latest iteration); set its status, and its output to the templated map
  `{workflowId, taskId, taskRefName, ...output}` plus the two `conductor.event.*` entries, as
  Conductor does. By reference: `POST /api/tasks/{workflowId}/{taskRefName}/{COMPLETED|FAILED}`
  with the output; by id, or when a `reasonForIncompletion` is given: `POST /api/tasks` (a
  TaskResult), after finding the workflow (`GET /api/tasks/{id}`) or the task id
  (`GET /api/workflow/{id}`) it needs.
- `terminate_workflow` (Orkes): `DELETE /api/workflow/{workflowId}?reason={terminationReason}`.
- `update_workflow_variables` (Orkes): `POST /api/workflow/{workflowId}/variables` with the
  variables; with `appendArray`, lists are appended to the lists already there.

As in Conductor, `name`, `version`, `taskToDomain`, `idempotencyStrategy` and `appendArray` are
taken as written; every other parameter is a template. Conductor's quirk of sending the
`correlationId` template text itself when it renders to null is kept.

Idempotency of `start_workflow`: the sink's dedupe table already skips a record delivered
before; the only window left is a crash after Conductor started the workflow and before the
delivery was recorded. Herald closes it with Orkes' idempotency: when the handler gives no
`idempotencyKey`, the delivery id (stable across redeliveries and replays) is sent as
`idempotencyKey` with `idempotencyStrategy: RETURN_EXISTING`, so a repeated start returns the
workflow already started instead of starting a second one. A key the user gives is sent as
given, with the user's strategy (Orkes' default when none). Open-source Conductor ignores both
fields.

Failures: 5xx, 408, 429, 401 (after one token renewal) and connection errors are retried with
the target's policy; any other 4xx (404 no such workflow or task, 400 invalid request, 409
conflict) fails at once and is dead-lettered. The result (the workflow id, the task id) is kept
in the execution record.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import Field, StrictBool, model_validator

from streams.actions.base import (
    ActionInputError,
    ActionRequest,
    Delivery,
    DeliveryContext,
    Origin,
    P,
    ParamsModel,
    Renderer,
)
from streams.conductor_auth import RENEW_ON, api_base, auth_error_code, token_cache
from streams.config.models import Target
from streams.delivery import classify_status, parse_retry_after
from streams.errors import DeliveryError
from streams.templating import to_text

EVENT_MESSAGE_ID = "conductor.event.messageId"
EVENT_NAME = "conductor.event.name"
IDEMPOTENCY_STRATEGIES = ("FAIL", "RETURN_EXISTING", "FAIL_ON_RUNNING")
_ITERATION = re.compile(r"__\d+$")


# --------------------------------------------------------------------------- HTTP


async def call(
    ctx: DeliveryContext,
    target: Target,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """One Conductor API call with the target's token; (status, body, content type) on 2xx.

    A 401 or 403 saying EXPIRED_TOKEN or INVALID_TOKEN renews the token once and retries the
    call; any other failure is a DeliveryError (see the module's docstring).
    """
    url = api_base(target) + path
    tokens = token_cache()
    auth = await tokens.headers(ctx.session, target)
    for attempt in (1, 2):
        headers = {"User-Agent": ctx.user_agent, "Accept": "application/json, text/plain"}
        headers.update(target.headers)
        headers.update(auth)
        status, text, content_type, retry_after = await _send(
            ctx.session, method, url, target, headers, json_body, params
        )
        if (
            status in (401, 403)
            and attempt == 1
            and target.keyId
            and auth_error_code(text) in RENEW_ON
        ):
            auth = await tokens.renew(ctx.session, target, stale=auth.get("X-Authorization"))
            continue
        break
    if 200 <= status < 300:
        return status, text, content_type
    raise _failure(method, path, status, text, retry_after)


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    target: Target,
    headers: dict[str, str],
    json_body: Any,
    params: dict[str, str] | None,
) -> tuple[int, str, str, str | None]:
    try:
        async with session.request(
            method,
            url,
            data=None if json_body is None else orjson.dumps(json_body),
            params=params,
            headers={**headers, "Content-Type": "application/json"}
            if json_body is not None
            else headers,
            timeout=aiohttp.ClientTimeout(total=target.timeoutSeconds),
        ) as response:
            text = await response.text(errors="replace")
            return (
                response.status,
                text,
                response.headers.get("Content-Type", ""),
                response.headers.get("Retry-After"),
            )
    except TimeoutError:
        raise DeliveryError(
            f"Conductor {method} {url} timed out after {target.timeoutSeconds:g} s",
            retryable=True,
        ) from None
    except aiohttp.InvalidURL as exc:
        raise DeliveryError(f"invalid Conductor URL {exc}", retryable=False) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise DeliveryError(
            f"Conductor {method} {url} failed: {exc.__class__.__name__}: {exc}", retryable=True
        ) from exc


def _failure(method: str, path: str, status: int, text: str, retry_after: str | None) -> Exception:
    message = _error_message(text)
    what = f"Conductor {method} {path}: HTTP {status}: {message}"
    if status == 401:  # still unauthorized after a renewal: retry (keys may be rotating)
        return DeliveryError(what, retryable=True, status=status)
    error = classify_status(status, text, retry_after)
    assert error is not None
    return DeliveryError(
        what,
        retryable=error.retryable,
        retry_after=parse_retry_after(retry_after) if error.retryable else None,
        status=status,
    )


def _error_message(text: str) -> str:
    """Conductor's ErrorResponse `message` (`{"status": 404, "message": "..."}`), else the body."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:300]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"][:300]
    return text[:300]


def _text_result(text: str, content_type: str) -> str:
    """A text/plain id, or the same id JSON-quoted (some proxies re-encode it)."""
    body = text.strip()
    if "json" in content_type and body.startswith('"'):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        return str(value)
    return body


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _segment(value: str) -> str:
    return quote(value, safe="")


# --------------------------------------------------------------------------- base


def _no_message_field(value: Any, name: str) -> Any:
    if value is not None:
        raise ValueError(f"{name} (a protobuf message) is not supported; use the map field")
    return value


class _ConductorAction(Renderer[P]):
    target_type: ClassVar[str | None] = "conductor"
    requires_target: ClassVar[bool] = True
    static: ClassVar[tuple[str, ...]] = ()  # parameters Conductor does not template

    def template_source(self) -> dict[str, Any]:
        data = super().template_source()
        for name in self.static:
            data.pop(name, None)
        return data

    def _event_fields(self, origin: Origin) -> dict[str, Any]:
        return {
            EVENT_MESSAGE_ID: origin.message_id,
            EVENT_NAME: self.event or f"kafka:{origin.integration}:{origin.topic}",
        }


def _require_target(target: Target | None, request: ActionRequest) -> Target:
    if target is None:
        raise DeliveryError(f"{request.action}: no conductor target", retryable=False)
    return target


def _text(value: Any) -> str | None:
    """A rendered id as Conductor reads it: null stays null, anything else is text."""
    if value is None:
        return None
    text = value if isinstance(value, str) else to_text(value)
    return text


# --------------------------------------------------------------------------- start_workflow


class StartWorkflowParams(ParamsModel):
    target: str | None = None
    name: str = Field(min_length=1)
    version: int | None = None
    correlationId: Any = None
    input: dict[str, Any] = Field(default_factory=dict)
    inputMessage: Any = None
    taskToDomain: dict[str, str] = Field(default_factory=dict)
    idempotencyKey: Any = None
    idempotencyStrategy: Literal["FAIL", "RETURN_EXISTING", "FAIL_ON_RUNNING"] | None = None

    @model_validator(mode="after")
    def _plain_input(self) -> StartWorkflowParams:
        _no_message_field(self.inputMessage, "inputMessage")
        return self


class StartWorkflow(_ConductorAction[StartWorkflowParams]):
    """Conductor's `start_workflow`: `POST /api/workflow`; the result is the workflow id."""

    name = "start_workflow"
    Params = StartWorkflowParams
    static = ("name", "version", "taskToDomain", "idempotencyStrategy", "inputMessage")

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        params = self.params
        workflow_input = rendered.get("input")
        workflow_input = dict(workflow_input) if isinstance(workflow_input, dict) else {}
        workflow_input.update(self._event_fields(origin))
        correlation = _text(rendered.get("correlationId"))
        if correlation is None and params.correlationId is not None:
            correlation = str(params.correlationId)  # Conductor sends the template text
        request: dict[str, Any] = {"name": params.name, "input": workflow_input}
        if params.version is not None:
            request["version"] = params.version
        if correlation is not None:
            request["correlationId"] = correlation
        if params.taskToDomain:
            request["taskToDomain"] = dict(params.taskToDomain)
        key = _text(rendered.get("idempotencyKey"))
        if key:
            request["idempotencyKey"] = key
            if params.idempotencyStrategy:
                request["idempotencyStrategy"] = params.idempotencyStrategy
        elif params.idempotencyStrategy:
            raise ActionInputError(
                "start_workflow.idempotencyKey rendered to nothing but idempotencyStrategy is "
                "set; give the key or remove the strategy"
            )
        return {"request": request}


class StartWorkflowDelivery(Delivery):
    """`POST /api/workflow`, idempotent by the delivery id unless the action gives a key."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        target = _require_target(target, request)
        body = dict(request.payload["request"])
        if "idempotencyKey" not in body:
            body["idempotencyKey"] = request.id
            body["idempotencyStrategy"] = "RETURN_EXISTING"
        _, text, content_type = await call(ctx, target, "POST", "/workflow", json_body=body)
        workflow_id = _text_result(text, content_type)
        if not workflow_id:
            raise DeliveryError(
                "Conductor POST /workflow answered without a workflow id", retryable=True
            )
        return {"workflowId": workflow_id}


# --------------------------------------------------------------------------- task updates


class TaskDetailsParams(ParamsModel):
    target: str | None = None
    workflowId: Any = None
    taskRefName: Any = None
    taskId: Any = None
    output: dict[str, Any] = Field(default_factory=dict)
    outputMessage: Any = None

    @model_validator(mode="after")
    def _plain_output(self) -> TaskDetailsParams:
        _no_message_field(self.outputMessage, "outputMessage")
        return self


class FailTaskParams(TaskDetailsParams):
    reasonForIncompletion: Any = None


class CompleteTask(_ConductorAction[TaskDetailsParams]):
    """Conductor's `complete_task`: set a task COMPLETED with the templated output."""

    name = "complete_task"
    Params: ClassVar[type[ParamsModel]] = TaskDetailsParams
    status: ClassVar[str] = "COMPLETED"

    def template_source(self) -> dict[str, Any]:
        # Conductor templates one map: {workflowId, taskId, taskRefName} then the output's
        # entries over it, and that map (with the event fields) becomes the task's output.
        params = self.params
        merged: dict[str, Any] = {
            "workflowId": params.workflowId,
            "taskId": params.taskId,
            "taskRefName": params.taskRefName,
        }
        merged.update(params.output)
        source: dict[str, Any] = {"output": merged}
        reason = getattr(params, "reasonForIncompletion", None)
        if reason is not None:
            source["reasonForIncompletion"] = reason
        return source

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        output = dict(rendered.get("output") or {})
        workflow_id = _text(output.get("workflowId"))
        task_id = _text(output.get("taskId"))
        ref_name = _text(output.get("taskRefName"))
        if not task_id and not (workflow_id and ref_name):
            raise ActionInputError(
                f"{self.name} found no task: taskId rendered to {task_id!r}, workflowId to "
                f"{workflow_id!r}, taskRefName to {ref_name!r}; give taskId, or workflowId and "
                "taskRefName"
            )
        output.update(self._event_fields(origin))
        payload: dict[str, Any] = {
            "status": self.status,
            "workflowId": workflow_id or None,
            "taskId": task_id or None,
            "taskRefName": ref_name or None,
            "output": output,
        }
        reason = rendered.get("reasonForIncompletion")
        if reason is not None:
            payload["reasonForIncompletion"] = _text(reason)
        return payload

    def ordering_key(self, payload: dict[str, Any], origin: Origin) -> str | None:
        key = payload.get("workflowId") or payload.get("taskId")
        return f"conductor:{key}" if key else None


class FailTask(CompleteTask):
    """Conductor's `fail_task`: set a task FAILED, with `reasonForIncompletion` if given."""

    name = "fail_task"
    Params: ClassVar[type[ParamsModel]] = FailTaskParams
    status: ClassVar[str] = "FAILED"


class TaskUpdateDelivery(Delivery):
    """Set a task's status and output (`complete_task`, `fail_task`: the status is in the
    payload), by reference when that is enough, else through a TaskResult."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        target = _require_target(target, request)
        p = request.payload
        status, reason = p["status"], p.get("reasonForIncompletion")
        workflow_id, task_id = p.get("workflowId"), p.get("taskId")
        if not task_id and reason is None:
            path = f"/tasks/{_segment(workflow_id)}/{_segment(p['taskRefName'])}/{status}"
            _, text, content_type = await call(ctx, target, "POST", path, json_body=p["output"])
            return {
                "taskId": _text_result(text, content_type),
                "workflowId": workflow_id,
                "status": status,
            }
        if not task_id:
            workflow_id, task_id = await _task_by_reference(
                ctx, target, workflow_id, p["taskRefName"]
            )
        elif not workflow_id:
            workflow_id = await _workflow_of_task(ctx, target, task_id)
        result: dict[str, Any] = {
            "workflowInstanceId": workflow_id,
            "taskId": task_id,
            "status": status,
            "outputData": p["output"],
        }
        if reason is not None:
            result["reasonForIncompletion"] = reason
        _, text, content_type = await call(ctx, target, "POST", "/tasks", json_body=result)
        return {
            "taskId": _text_result(text, content_type) or task_id,
            "workflowId": workflow_id,
            "status": status,
        }


async def _workflow_of_task(ctx: DeliveryContext, target: Target, task_id: str) -> str:
    """The workflow of a task (`GET /api/tasks/{taskId}`; 204 means there is no such task)."""
    status, text, _ = await call(ctx, target, "GET", f"/tasks/{_segment(task_id)}")
    task = _json(text) if status != 204 else None
    workflow_id = task.get("workflowInstanceId") if isinstance(task, dict) else None
    if not workflow_id:
        raise DeliveryError(
            f"Conductor GET /tasks/{task_id}: no task with taskId {task_id!r}",
            retryable=False,
            status=404,
        )
    return str(workflow_id)


async def _task_by_reference(
    ctx: DeliveryContext, target: Target, workflow_id: str, ref_name: str
) -> tuple[str, str]:
    """(workflowId, taskId) of a task by reference name, as Conductor's action finds it: of the
    tasks with that reference (loop iterations `ref__2` included), the highest iteration, and of
    those the latest."""
    path = f"/workflow/{_segment(workflow_id)}"
    _, text, _ = await call(ctx, target, "GET", path, params={"includeTasks": "true"})
    workflow = _json(text)
    tasks = workflow.get("tasks") if isinstance(workflow, dict) else None
    candidates = [
        (int(task.get("iteration") or 0), position, task)
        for position, task in enumerate(tasks if isinstance(tasks, list) else [])
        if isinstance(task, dict)
        and _ITERATION.sub("", str(task.get("referenceTaskName", ""))) == ref_name
        and task.get("taskId")
    ]
    if not candidates:
        raise DeliveryError(
            f"Conductor: no task {ref_name!r} in workflow {workflow_id!r}",
            retryable=False,
            status=404,
        )
    _, _, found = max(candidates, key=lambda c: (c[0], c[1]))
    return workflow_id, str(found["taskId"])


# --------------------------------------------------------------------------- workflows


class TerminateWorkflowParams(ParamsModel):
    target: str | None = None
    workflowId: Any = None
    terminationReason: Any = None


class TerminateWorkflow(_ConductorAction[TerminateWorkflowParams]):
    """Orkes' `terminate_workflow`: `DELETE /api/workflow/{workflowId}?reason=...`."""

    name = "terminate_workflow"
    Params = TerminateWorkflowParams

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        workflow_id = _text(rendered.get("workflowId"))
        if not workflow_id:
            raise ActionInputError("terminate_workflow.workflowId rendered to nothing")
        payload: dict[str, Any] = {"workflowId": workflow_id}
        reason = rendered.get("terminationReason")
        if reason is not None:
            payload["terminationReason"] = _text(reason)
        return payload

    def ordering_key(self, payload: dict[str, Any], origin: Origin) -> str | None:
        return f"conductor:{payload['workflowId']}"


class TerminateWorkflowDelivery(Delivery):
    """`DELETE /api/workflow/{workflowId}?reason=...`."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        target = _require_target(target, request)
        workflow_id = request.payload["workflowId"]
        reason = request.payload.get("terminationReason")
        params = {"reason": reason} if reason is not None else None
        await call(ctx, target, "DELETE", f"/workflow/{_segment(workflow_id)}", params=params)
        return {"workflowId": workflow_id, "terminated": True}


class UpdateWorkflowVariablesParams(ParamsModel):
    target: str | None = None
    workflowId: Any = None
    variables: dict[str, Any] = Field(default_factory=dict)
    appendArray: StrictBool = False


class UpdateWorkflowVariables(_ConductorAction[UpdateWorkflowVariablesParams]):
    """Orkes' `update_workflow_variables`: `POST /api/workflow/{workflowId}/variables`.

    With `appendArray`, a list given for a variable that already holds a list is appended to
    it: the current variables are read first (`GET /api/workflow/{id}`) and the combined lists
    are sent. Two concurrent appenders to the same variable can lose one another's items, as
    with any read-modify-write; Herald delivers the actions of one workflow in order.
    """

    name = "update_workflow_variables"
    Params = UpdateWorkflowVariablesParams
    static = ("appendArray",)

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        params = self.params
        workflow_id = _text(rendered.get("workflowId"))
        if not workflow_id:
            raise ActionInputError("update_workflow_variables.workflowId rendered to nothing")
        variables = rendered.get("variables")
        return {
            "workflowId": workflow_id,
            "variables": dict(variables) if isinstance(variables, dict) else {},
            "appendArray": params.appendArray,
        }

    def ordering_key(self, payload: dict[str, Any], origin: Origin) -> str | None:
        return f"conductor:{payload['workflowId']}"


class UpdateWorkflowVariablesDelivery(Delivery):
    """`POST /api/workflow/{workflowId}/variables`; with `appendArray`, lists are read first
    and appended to (see `UpdateWorkflowVariables`)."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        target = _require_target(target, request)
        workflow_id = request.payload["workflowId"]
        variables = dict(request.payload["variables"])
        path = f"/workflow/{_segment(workflow_id)}"
        if request.payload.get("appendArray") and any(
            isinstance(v, list) for v in variables.values()
        ):
            _, text, _ = await call(ctx, target, "GET", path, params={"includeTasks": "false"})
            workflow = _json(text)
            current = workflow.get("variables") if isinstance(workflow, dict) else None
            current = current if isinstance(current, dict) else {}
            for name, value in variables.items():
                if isinstance(value, list) and isinstance(current.get(name), list):
                    variables[name] = [*current[name], *value]
        await call(ctx, target, "POST", f"{path}/variables", json_body=variables)
        return {"workflowId": workflow_id, "variables": sorted(variables)}
