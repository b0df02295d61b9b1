"""A loopback Conductor server for tests: the REST endpoints Herald's Conductor actions call.

It keeps workflows and tasks in memory and answers as Conductor documents it (conductor-oss
`WorkflowResource`, `TaskResource`, `ApplicationExceptionMapper`; Orkes' token, idempotency,
terminate and variables endpoints):

- `POST /api/token` `{keyId, keySecret}` → `{"token": <JWT with exp>}`; 404 when the server has
  no authentication; 401 for unknown credentials. With authentication on, every other call
  needs `X-Authorization: <token>`: 401 `{"error": "INVALID_TOKEN"}` without a known token and
  401 `{"error": "EXPIRED_TOKEN"}` once the token expired (`expire_tokens()` forces it).
- `POST /api/workflow` (StartWorkflowRequest) → the workflow id as text/plain; 404 for an
  unknown workflow definition, 400 without a name; Orkes idempotency: `idempotencyKey` with
  `RETURN_EXISTING` returns the existing id, `FAIL` (the default) and `FAIL_ON_RUNNING` (while
  it runs) answer 409.
- `GET /api/workflow/{id}?includeTasks=` → the Workflow; `DELETE /api/workflow/{id}?reason=`
  terminates it (409 when already terminal); `POST /api/workflow/{id}/variables` merges
  variables and returns the Workflow.
- `POST /api/tasks` (TaskResult) → the task id as text; 400 without workflowInstanceId/taskId,
  404 for an unknown task; an update of a terminal task is ignored. `GET /api/tasks/{id}` → the
  Task, or 204. `POST /api/tasks/{workflowId}/{taskRefName}/{status}` → the task id; 404 when
  no pending task has that reference.
- `GET /api/event` → the event handlers given to the server (Conductor's export).

Errors are Conductor's ErrorResponse JSON (`{status, message, instance, retryable}`). Every
request is recorded; a test can script failures (`fail_next`) and make the server finish a
start and then not answer (`hold_starts`), to stand for a crash after Conductor acted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

TERMINAL = {"COMPLETED", "FAILED", "FAILED_WITH_TERMINAL_ERROR", "TERMINATED", "TIMED_OUT"}
TASK_STATUSES = {"IN_PROGRESS", "FAILED", "FAILED_WITH_TERMINAL_ERROR", "COMPLETED"}


@dataclass
class Call:
    """One request as it arrived, and the status it got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    text: str
    status: int | None = None
    time: float = field(default_factory=time.time)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class ConductorServer:
    """Conductor's REST API on 127.0.0.1, in a background thread (see the module docstring)."""

    def __init__(
        self,
        *,
        auth: bool = False,
        key_id: str = "app-key-id",
        key_secret: str = "app-key-secret",
        token_ttl: float = 3600.0,
    ) -> None:
        self.auth = auth
        self.keys = {key_id: key_secret}
        self.token_ttl = token_ttl
        self.port = 0
        self.calls: list[Call] = []
        self.workflow_defs: dict[str, list[str]] = {}
        self.workflows: dict[str, dict[str, Any]] = {}
        self.event_handlers: list[dict[str, Any]] = []
        self.tokens: dict[str, float] = {}  # token -> expiry (server side)
        self._idempotency: dict[tuple[str, str], str] = {}
        self._failures: list[tuple[str, str, int, Any]] = []
        self._holds = 0
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    # ------------------------------------------------------------------ scripting

    def define_workflow(self, name: str, tasks: tuple[str, ...] = ("wait_ref",)) -> Self:
        """A workflow definition; each start schedules one IN_PROGRESS task per reference."""
        self.workflow_defs[name] = list(tasks)
        return self

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on (the client cannot know)."""
        with self._cond:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def fail_next(
        self, method: str, path_prefix: str, status: int, count: int = 1, body: Any = None
    ) -> Self:
        """The next `count` matching requests get `status` (body: an ErrorResponse)."""
        with self._cond:
            for _ in range(count):
                self._failures.append((method, path_prefix, status, body))
        return self

    def hold_starts(self, count: int = 1) -> Self:
        """The next `count` starts are carried out, then left unanswered until the server
        stops: Conductor started the workflow but the client never heard back."""
        with self._cond:
            self._holds += count
        return self

    # ------------------------------------------------------------------ observing

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str | None = None, path: str | None = None) -> list[Call]:
        with self._cond:
            return [
                c
                for c in self.calls
                if (method is None or c.method == method) and (path is None or c.path == path)
            ]

    def wait_for(
        self,
        count: int,
        timeout: float = 30.0,
        *,
        method: str | None = None,
        path: str | None = None,
        predicate: Callable[[Call], bool] | None = None,
        answered: bool = True,
    ) -> list[Call]:
        """Block until `count` matching requests arrived (and were answered); return them.
        `path` matches as a prefix."""

        def matching() -> list[Call]:
            return [
                c
                for c in self.calls
                if (method is None or c.method == method)
                and (path is None or c.path.startswith(path))
                and (predicate is None or predicate(c))
                and (not answered or c.status is not None)
            ]

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = matching()
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = ", ".join(f"{c.method} {c.path} -> {c.status}" for c in self.calls)
                    raise TimeoutError(
                        f"expected {count} call(s) {method} {path}, got {len(found)}: [{seen}]"
                    )
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve())
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="conductor-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("conductor server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()

    # ------------------------------------------------------------------ dispatch

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        text = await request.text()
        try:
            parsed: Any = json.loads(text) if text else None
        except ValueError:
            parsed = None
        call = Call(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            json=parsed,
            text=text,
        )
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()
        try:
            response = await self._respond(request, call)
        except asyncio.CancelledError:
            self._answered(call, 499)
            raise
        self._answered(call, response.status)
        return response

    def _answered(self, call: Call, status: int) -> None:
        with self._cond:
            call.status = status
            self._cond.notify_all()

    async def _respond(self, request: web.Request, call: Call) -> web.StreamResponse:
        path, method = call.path, call.method
        scripted = self._scripted(method, path)
        if scripted is not None:
            return scripted
        if path == "/api/token" and method == "POST":
            return self._token(call)
        if not path.startswith("/api/"):
            return _error(404, f"No static resource {path}")
        denied = self._authorize(call)
        if denied is not None:
            return denied
        parts = path[len("/api/") :].split("/")
        try:
            if parts == ["workflow"] and method == "POST":
                return await self._start(call)
            if parts[0] == "workflow" and len(parts) == 2:
                if method == "GET":
                    return self._get_workflow(parts[1], call)
                if method == "DELETE":
                    return self._terminate(parts[1], call)
            if parts[0] == "workflow" and len(parts) == 3 and parts[2] == "variables":
                if method == "POST":
                    return self._variables(parts[1], call)
            if parts == ["tasks"] and method == "POST":
                return self._update_task(call)
            if parts[0] == "tasks" and len(parts) == 2 and method == "GET":
                return self._get_task(parts[1])
            if parts[0] == "tasks" and len(parts) == 4 and method == "POST":
                return self._update_by_ref(parts[1], parts[2], parts[3], call)
            if parts == ["event"] and method == "GET":
                return web.json_response(self.event_handlers)
        except _Problem as problem:
            return _error(problem.status, problem.message)
        return _error(404, f"No endpoint {method} {path}")

    def _scripted(self, method: str, path: str) -> web.Response | None:
        with self._cond:
            for i, (m, prefix, status, body) in enumerate(self._failures):
                if m == method and path.startswith(prefix):
                    del self._failures[i]
                    if body is None:
                        return _error(status, f"scripted failure {status}")
                    return web.json_response(body, status=status)
        return None

    # ------------------------------------------------------------------ auth

    def _token(self, call: Call) -> web.Response:
        if not self.auth:
            return web.json_response(
                {"timestamp": int(time.time() * 1000), "status": 404, "error": "Not Found"},
                status=404,
            )
        body = call.json if isinstance(call.json, dict) else {}
        key_id, secret = body.get("keyId"), body.get("keySecret")
        if not key_id or self.keys.get(key_id) != secret:
            return web.json_response(
                {"status": 401, "error": "INVALID_CREDENTIALS", "message": "invalid key"},
                status=401,
            )
        expiry = time.time() + self.token_ttl
        claims = {"sub": key_id, "exp": int(expiry), "jti": uuid.uuid4().hex}
        token = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}.{uuid.uuid4().hex}"
        with self._cond:
            self.tokens[token] = expiry
        return web.json_response({"token": token})

    def _authorize(self, call: Call) -> web.Response | None:
        if not self.auth:
            return None
        token = call.header("X-Authorization")
        with self._cond:
            expiry = self.tokens.get(token or "")
        if expiry is None:
            return web.json_response(
                {"error": "INVALID_TOKEN", "message": "Token is not valid"}, status=401
            )
        if expiry <= time.time():
            return web.json_response(
                {"error": "EXPIRED_TOKEN", "message": "Token has expired"}, status=401
            )
        return None

    # ------------------------------------------------------------------ workflows

    async def _start(self, call: Call) -> web.StreamResponse:
        body = call.json if isinstance(call.json, dict) else {}
        name = body.get("name")
        if not name:
            return web.json_response(
                {
                    "status": 400,
                    "message": "Validation failed, check below errors for detail.",
                    "validationErrors": [
                        {
                            "path": "startWorkflow.request.name",
                            "message": "Workflow name cannot be null or empty",
                        }
                    ],
                },
                status=400,
            )
        if name not in self.workflow_defs:
            raise _Problem(
                404, f"No such workflow found by name: {name}, version: {body.get('version')}"
            )
        key = body.get("idempotencyKey")
        with self._cond:
            existing = self._idempotency.get((name, key)) if key else None
            if existing is not None:
                strategy = body.get("idempotencyStrategy") or "FAIL"
                running = self.workflows[existing]["status"] == "RUNNING"
                if strategy == "RETURN_EXISTING":
                    return _text(existing)
                if strategy == "FAIL" or (strategy == "FAIL_ON_RUNNING" and running):
                    raise _Problem(
                        409, f"Workflow with idempotency key {key} already exists: {existing}"
                    )
            workflow_id = str(uuid.uuid4())
            self.workflows[workflow_id] = self._new_workflow(workflow_id, name, body)
            if key:
                self._idempotency[(name, key)] = workflow_id
            hold = self._holds > 0
            if hold:
                self._holds -= 1
        if hold:
            assert self._release is not None
            await self._release.wait()
        return _text(workflow_id)

    def _new_workflow(self, workflow_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        tasks = [
            {
                "taskId": str(uuid.uuid4()),
                "referenceTaskName": ref,
                "taskType": "WAIT",
                "status": "IN_PROGRESS",
                "workflowInstanceId": workflow_id,
                "inputData": {},
                "outputData": {},
                "reasonForIncompletion": None,
                "iteration": 0,
            }
            for ref in self.workflow_defs[name]
        ]
        return {
            "workflowId": workflow_id,
            "workflowName": name,
            "workflowVersion": body.get("version") or 1,
            "status": "RUNNING",
            "correlationId": body.get("correlationId"),
            "input": body.get("input") or {},
            "output": {},
            "variables": {},
            "taskToDomain": body.get("taskToDomain") or {},
            "reasonForIncompletion": None,
            "idempotencyKey": body.get("idempotencyKey"),
            "createTime": int(time.time() * 1000),
            "tasks": tasks,
        }

    def _workflow(self, workflow_id: str) -> dict[str, Any]:
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            raise _Problem(404, f"No such workflow found by id: {workflow_id}")
        return workflow

    def _get_workflow(self, workflow_id: str, call: Call) -> web.Response:
        with self._cond:
            workflow = dict(self._workflow(workflow_id))
        if call.query.get("includeTasks", "true") == "false":
            workflow["tasks"] = []
        return web.json_response(workflow)

    def _terminate(self, workflow_id: str, call: Call) -> web.Response:
        with self._cond:
            workflow = self._workflow(workflow_id)
            if workflow["status"] in TERMINAL:
                raise _Problem(409, f"Cannot terminate a {workflow['status']} workflow")
            workflow["status"] = "TERMINATED"
            workflow["reasonForIncompletion"] = call.query.get("reason")
            for task in workflow["tasks"]:
                if task["status"] not in TERMINAL:
                    task["status"] = "CANCELED"
        return web.Response(status=200)

    def _variables(self, workflow_id: str, call: Call) -> web.Response:
        if not isinstance(call.json, dict):
            raise _Problem(400, "the variables must be a JSON object")
        with self._cond:
            workflow = self._workflow(workflow_id)
            workflow["variables"].update(call.json)
            snapshot = dict(workflow)
        return web.json_response(snapshot)

    # ------------------------------------------------------------------ tasks

    def _find_task(self, task_id: str) -> dict[str, Any] | None:
        for workflow in self.workflows.values():
            for task in workflow["tasks"]:
                if task["taskId"] == task_id:
                    return task
        return None

    def _apply(self, task: dict[str, Any], status: str, output: Any, reason: Any) -> None:
        if task["status"] in TERMINAL:
            return  # Conductor ignores updates of a terminal task
        task["status"] = status
        task["outputData"] = dict(output or {})
        task["reasonForIncompletion"] = reason
        workflow = self.workflows[task["workflowInstanceId"]]
        if status in ("FAILED", "FAILED_WITH_TERMINAL_ERROR"):
            workflow["status"] = "FAILED"
            workflow["reasonForIncompletion"] = reason
        elif all(t["status"] == "COMPLETED" for t in workflow["tasks"]):
            workflow["status"] = "COMPLETED"

    def _update_task(self, call: Call) -> web.Response:
        body = call.json if isinstance(call.json, dict) else {}
        if not body.get("workflowInstanceId") or not body.get("taskId"):
            raise _Problem(400, "Workflow Id and Task Id cannot be null or empty")
        status = body.get("status")
        if status not in TASK_STATUSES:
            raise _Problem(400, f"Invalid status {status}")
        with self._cond:
            task = self._find_task(body["taskId"])
            if task is None:
                raise _Problem(404, f"No such task found by id: {body['taskId']}")
            self._apply(task, status, body.get("outputData"), body.get("reasonForIncompletion"))
        return _text(body["taskId"])

    def _get_task(self, task_id: str) -> web.Response:
        with self._cond:
            task = self._find_task(task_id)
        if task is None:
            return web.Response(status=204)
        return web.json_response(task)

    def _update_by_ref(self, workflow_id: str, ref: str, status: str, call: Call) -> web.Response:
        if status not in TASK_STATUSES:
            raise _Problem(
                400, f"Failed to convert value of type 'String' to TaskResult.Status: {status}"
            )
        with self._cond:
            workflow = self._workflow(workflow_id)
            pending = [
                t
                for t in workflow["tasks"]
                if t["referenceTaskName"] == ref and t["status"] not in TERMINAL
            ]
            if not pending:
                raise _Problem(
                    404, f"Found no running task {ref} of workflow {workflow_id} to update"
                )
            task = pending[-1]
            self._apply(task, status, call.json, None)
        return _text(task["taskId"])


class _Problem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"status": status, "message": message, "instance": "conductor-test", "retryable": False},
        status=status,
    )


def _text(value: str) -> web.Response:
    return web.Response(text=value, content_type="text/plain")
