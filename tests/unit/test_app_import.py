"""Importing the Faust app module does no work (issue 12): `faust -A agents.app` builds the
app only when it asks for `app`, so tools and tests can import it without a configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def python(code: str, config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"HERALD_CONFIG": config, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_importing_the_app_module_reads_no_configuration(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    result = python("import agents.app; print(agents.app._app)", missing)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"  # nothing built
    assert "missing.yaml" not in result.stderr


def test_asking_for_the_app_checks_the_configuration_and_refuses_with_exit_2(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "missing.yaml")
    result = python("import agents.app; agents.app.app", missing)
    assert result.returncode == 2
    assert f"herald: configuration {missing} is invalid; not starting" in result.stderr
