"""The loss detector for tests: `herald audit` (agents.audit) on a test deployment."""

from __future__ import annotations

import asyncio

from agents.audit import AuditReport, audit
from streams.config.checked import load_checked
from tests.support.herald import HeraldDeployment


def audit_deployment(herald: HeraldDeployment, topics: list[str] | None = None) -> AuditReport:
    """Read the deployment's topics and committed offsets with an independent consumer and
    report what was committed without being done (`lost`) and what was delivered twice.
    `topics` is informational: the audit checks every source topic of the handlers."""
    path = str(herald.config_path)
    return asyncio.run(audit(load_checked(path)))
