"""Run `herald ilagent daemon ...` as a real subprocess, as an operator replacing ilagent would.

The daemon compiles ilagent's flags into a configuration, sets up the group's offsets and
runs the Faust worker in the same process, so `IlagentDaemon` is a `WorkerProcess` whose
command is the daemon's: stop, kill, restart and the log work as for any worker. The HTTP port
is the daemon's `-p`, so readiness is ilagent's `GET /ready` on that port.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.embedded.broker import free_port
from agents.embedded.worker import WorkerProcess


class IlagentDaemon(WorkerProcess):
    """`python -m agents.cli ilagent daemon FLAGS -p PORT --data_dir WORKDIR/data`."""

    def __init__(
        self,
        flags: Sequence[str],
        *,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(env=env, workdir=workdir, web_port=port or free_port())
        self.flags = list(flags)

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agents.cli",
            "ilagent",
            "daemon",
            *self.flags,
            "-p",
            str(self.web_port),
            "--data_dir",
            str(self.datadir),
        ]

    def start_ready(self, timeout: float = 90.0) -> IlagentDaemon:
        self.start()
        self.wait_http_ready(timeout)
        return self

    def http(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str, Any]:
        """(status, content type, body: JSON when JSON, else text) of a call to the daemon."""
        data = None
        all_headers = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(
            f"{self.web_url}{path}", data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return _read(response)
        except urllib.error.HTTPError as exc:
            return _read(exc)


def _read(response: Any) -> tuple[int, str, Any]:
    raw = response.read()
    content_type = response.headers.get("Content-Type", "")
    text = raw.decode(errors="replace")
    if "json" in content_type and text:
        return response.status, content_type, json.loads(text)
    return response.status, content_type, text
