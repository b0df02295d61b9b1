"""``python -m bench.run --status-page``: every case's configuration gets the admin key (so
the worker serves its status page behind it) and still passes Herald's own check; without the
option nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench import herald
from bench.run import parse_args
from streams.config.checked import load_checked


def _config() -> dict:
    return herald.config(
        name="bench-x",
        bootstrap="127.0.0.1:9",
        topic="events",
        receiver_url="http://127.0.0.1:9",
        partitions=8,
        max_in_flight=512,
        tansu=False,
    )


def test_the_option_is_off_by_default() -> None:
    assert parse_args(["--cases", "F"]).status_page is False
    assert parse_args(["--cases", "F", "--status-page"]).status_page is True


def test_with_a_key_the_case_config_has_the_admin_api_and_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "admin" not in _config()["herald"]
    key = {"keyId": "bench", "keySecret": "bench-secret-0123456789"}
    monkeypatch.setattr(herald, "STATUS_PAGE_KEY", key)
    content = _config()
    assert content["herald"]["admin"] == key
    path = tmp_path / "herald.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    checked = load_checked(path)
    assert checked.config.herald.admin is not None
    assert checked.config.herald.admin.keyId == "bench"
