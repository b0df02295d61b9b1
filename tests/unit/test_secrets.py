"""Secrets are scrubbed by value at every exit: the scrubber, the logging filter, dead letters,
execution records, and the loader registering what it resolved."""

from __future__ import annotations

import base64
import io
import logging
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams import executions
from streams.actions.base import ActionRequest
from streams.config.loader import load_config
from streams.deadletter import DeadLetter, for_envelope
from streams.message import Envelope
from streams.secrets import MASK, SCRUBBER, Scrubber, ScrubFilter, install_logging, scrub_json


def token() -> str:
    return f"tok-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- the scrubber


def test_scrub_masks_every_registered_value_longest_first() -> None:
    scrubber = Scrubber()
    scrubber.register("abcd1234")
    scrubber.register("abcd1234-and-more")

    text = "key=abcd1234-and-more, again abcd1234, twice abcd1234abcd1234"

    assert scrubber.scrub(text) == f"key={MASK}, again {MASK}, twice {MASK}{MASK}"


@pytest.mark.parametrize("value", ["", "abc", "true", "False", "no", "8080", "30000", "1.5"])
def test_short_and_plain_values_are_not_masked(value: str) -> None:
    scrubber = Scrubber()
    scrubber.register(value)

    assert not scrubber.active
    assert scrubber.scrub(f"offset 8080 is true: {value}") == f"offset 8080 is true: {value}"


def test_common_encodings_are_masked() -> None:
    scrubber = Scrubber()
    secret = 'p@ss/"word"'
    scrubber.register(secret)

    assert scrubber.scrub("url https://u:p%40ss%2F%22word%22@host") == f"url https://u:{MASK}@host"
    echoed = orjson.dumps({"password": secret}).decode()  # JSON escapes the quotes
    assert secret not in scrubber.scrub(echoed) and MASK in scrubber.scrub(echoed)


def test_credential_headers_mask_the_whole_value_and_the_credential() -> None:
    scrubber = Scrubber()
    scrubber.register_header("Bearer s3cr3t-token")
    basic = base64.b64encode(b"alice:wonderland").decode()
    scrubber.register_header(f"Basic {basic}")

    assert scrubber.scrub("got s3cr3t-token") == f"got {MASK}"
    assert scrubber.scrub(f"Authorization: Basic {basic}") == f"Authorization: {MASK}"
    assert scrubber.scrub(f"echo {basic}") == f"echo {MASK}"
    assert scrubber.scrub("password was wonderland") == f"password was {MASK}"


def test_scrub_data_walks_json_and_copies_only_what_changes() -> None:
    scrubber = Scrubber()
    scrubber.register("sekrit-value")
    untouched = {"a": [1, "x"], "b": {"c": None}}
    data = {"ok": untouched, "echo": ["Bearer sekrit-value"], "sekrit-value": 1}

    scrubbed = scrubber.scrub_data(data)

    assert scrubbed == {"ok": untouched, "echo": [f"Bearer {MASK}"], MASK: 1}
    assert scrubbed["ok"] is untouched
    assert scrubber.scrub_data(untouched) is untouched


def test_register_config_finds_secret_fields_headers_and_url_passwords(tmp_path: Path) -> None:
    env_token, sasl, ilert, header = token(), token(), token(), token()
    sr_key, sr_secret, url_pw = token(), token(), token()
    config = {
        "integrations": [
            {
                "name": "local",
                "bootstrapServers": "localhost:9092",
                "connectionSecurity": "SASL_PLAINTEXT / PLAIN",
                "username": "herald",
                "password": sasl,  # a literal secret field, not from the environment
                "sendingProtocol": "AVRO",
                "schemaRegistry": {
                    "url": "https://registry:8081",
                    "authType": "USER_INFO",
                    "apiKey": sr_key,
                    "apiSecret": sr_secret,
                },
            }
        ],
        "targets": [
            {"name": "ilert", "type": "ilert", "baseUrl": "https://x", "integrationKey": ilert},
            {
                "name": "hooks",
                "type": "webhook",
                "url": f"https://user:{url_pw}@hooks.example/",
                "headers": {
                    "Authorization": "Bearer ${env:SOME_TOKEN}",
                    "X-Api-Key": header,
                    "Content-Type": "application/json",
                },
            },
        ],
        "eventHandlers": [],
    }
    path = tmp_path / "herald.yaml"
    path.write_text(yaml.safe_dump(config))

    load_config(path, environ={"SOME_TOKEN": env_token})

    for secret in (env_token, sasl, ilert, header, sr_key, sr_secret, url_pw):
        assert SCRUBBER.scrub(f"... {secret} ...") == f"... {MASK} ...", secret
    basic = base64.b64encode(f"{sr_key}:{sr_secret}".encode()).decode()
    assert basic not in SCRUBBER.scrub(f"Authorization: Basic {basic}")
    assert SCRUBBER.scrub("application/json localhost:9092") == "application/json localhost:9092"


# --------------------------------------------------------------------------- exits


def test_log_filter_scrubs_message_args_and_exception_text() -> None:
    scrubber = Scrubber()
    secret = token()
    scrubber.register(secret)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubFilter(scrubber))
    logger = logging.getLogger(f"test.secrets.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("dead-lettered: %s", f"HTTP 400: Authorization: Bearer {secret}")
        try:
            raise RuntimeError(f"boom {secret}")
        except RuntimeError:
            logger.exception("failed with %r", {"token": secret})
    finally:
        logger.removeHandler(handler)

    output = stream.getvalue()
    assert secret not in output
    assert f"Bearer {MASK}" in output and f"boom {MASK}" in output


def test_install_logging_scrubs_records_of_every_logger_and_handler() -> None:
    secret = token()
    SCRUBBER.register(secret)
    install_logging()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # added after install, with no filter of its own
    logger = logging.getLogger(f"aiokafka.test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("broker said %s", secret)
    finally:
        logger.removeHandler(handler)

    assert stream.getvalue() == f"broker said {MASK}\n"


def envelope() -> Envelope:
    return Envelope(
        value=None,
        topic="alarms",
        partition=2,
        offset=40,
        integration="local",
        key="k",
        headers={"trace": "t"},
        timestamp=1,
        raw_value=b"{}",
        raw_key=b"k",
    )


def request(**payload: Any) -> ActionRequest:
    return ActionRequest(
        id="d" * 32,
        handler="h",
        event="kafka:local:alarms",
        action="webhook",
        index=0,
        payload=payload,
        ordering_key="k",
        source={"topic": "alarms", "partition": 2, "offset": 40, "messageId": "m"},
        integration="local",
        created_ms=1,
    )


def test_dead_letters_are_scrubbed_in_every_text_field() -> None:
    secret = token()
    SCRUBBER.register(secret)
    req = request(url="https://x", headers={"Authorization": f"Bearer {secret}"})

    letter = DeadLetter(
        stage="delivery",
        reason=f'HTTP 400: {{"echo": "Authorization: Bearer {secret}"}}',
        integration="local",
        source={"topic": "alarms", "partition": 2, "offset": 40, "headers": {"x": secret}},
        value=None,
        request=orjson.loads(req.to_bytes()),
    )
    from_source = for_envelope(envelope(), "condition", f"threw {secret}", handler="h")

    for data in (letter.to_bytes(), from_source.to_bytes(), *[v for _, v in letter.headers()]):
        assert secret.encode() not in data
    assert letter.reason == f'HTTP 400: {{"echo": "Authorization: Bearer {MASK}"}}'
    assert letter.request is not None and letter.request["id"] == req.id


def test_execution_records_are_scrubbed() -> None:
    secret = token()
    SCRUBBER.register(secret)
    rec = executions.record(
        request(headers={"Authorization": f"Bearer {secret}"}),
        executions.DEAD_LETTERED,
        attempts=1,
        error=f"HTTP 400: Authorization: Bearer {secret}",
        redacted_payload={"headers": {"Authorization": f"Bearer {secret}"}},
    )

    data = executions.to_bytes(rec)

    assert secret.encode() not in data
    assert orjson.loads(data)["error"] == f"HTTP 400: Authorization: Bearer {MASK}"


def test_scrub_json_returns_clean_bytes_unchanged() -> None:
    clean = orjson.dumps({"status": "COMPLETED", "result": {"status": 202}})

    assert scrub_json({}, clean) is clean
