"""One scrubber for every secret value Herald knows, applied where text leaves the process.

Why by value, in one place: a secret leaks through whatever text happens to carry it — a
receiver's 400 body that echoes the request (`Authorization: Bearer <token>`), an exception
message, a URL — and masking it field by field at each call site always misses the next
carrier. So the configuration loader registers every secret value once, when it resolves
them, and each exit scrubs whatever text it is about to write:

- logs: `install_logging()` (a `logging.Filter` run on every record as it is created, so it
  covers every logger and every handler, including those the Faust worker installs later),
  installed by `register_config`, i.e. as soon as a process loaded a configuration;
- dead letters: `streams.deadletter.DeadLetter` scrubs its text fields when it is built;
- execution records: `streams.executions.to_bytes`;
- web answers: `agents.views`.

What is registered (`register_config`): every value substituted for `${env:}`/`${file:}`,
every secret-typed field (pydantic `SecretStr`: passwords, schema-registry keys, ilert
integration keys, Conductor keys), literal values of secret-named fields and credential
headers (`Authorization`, `X-Api-Key`, ... and the credential after `Bearer `/`Basic `), and
passwords in URLs (`https://user:secret@host`). Tokens obtained at run time (Conductor's) are
registered where they are obtained. Each value is also matched in its common encodings: JSON
escaped, URL-encoded, and base64 of `user:password` where a pair is known (HTTP Basic auth).

Values shorter than `MIN_LENGTH` and plain values (true/false/yes/no/on/off, short numbers)
are not registered: masking "1" or "true" everywhere would garble every line, and they are
not credentials. The mask is `***`.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

import orjson
from pydantic import BaseModel, SecretStr

MASK = "***"
#: Shorter values are not secrets worth masking everywhere (and would garble every line).
MIN_LENGTH = 4
#: Field names whose literal values are secrets even when not typed SecretStr.
SECRET_FIELD_NAMES = frozenset(
    {
        "password",
        "apiSecret",
        "apiKey",
        "truststorePassword",
        "sslClientKeyPassword",
        "integrationKey",
        "keyId",
        "keySecret",
    }
)

_PLAIN = re.compile(r"^(?:true|false|yes|no|on|off|null|none|[-+]?\d{1,9}(?:\.\d+)?)$", re.I)
_URL_PASSWORD = re.compile(r"\w+://[^/\s:@]*:([^/\s@]+)@")
_CREDENTIAL_HEADER = re.compile(r"auth|token|secret|password|api-?key|cookie|session", re.I)
_SCHEME = re.compile(r"^\s*(?:bearer|basic|token|apikey|digest)\s+(\S+)\s*$", re.I)


def mask_keys(mapping: Mapping[str, Any], keys: Collection[str]) -> dict[str, Any]:
    """A copy of `mapping` with the values of those of `keys` it holds masked: for a secret
    whose place is known (a payload's `integrationKey`) even when it was never registered."""
    return {k: (MASK if k in keys else v) for k, v in mapping.items()}


def mask_secret(text: str, secret: str) -> str:
    """`text` with every occurrence of one known secret masked: for a secret met where it is
    used (a key from a message, in the URL an error names), which the scrubber cannot know."""
    return text.replace(secret, MASK) if secret else text


def is_credential_header(name: str) -> bool:
    """Headers whose values are credentials (`Authorization`, `X-Api-Key`, `Cookie`, ...)."""
    lowered = name.lower()
    return lowered != "idempotency-key" and bool(_CREDENTIAL_HEADER.search(lowered))


class Scrubber:
    """A set of secret values and the one regular expression that finds any of them.

    `scrub` replaces every occurrence (longest value first, so a value that contains another
    is masked whole) with `***`. Registering is rare (at load, at a token renewal); scrubbing
    is on every exit, so the pattern is compiled once per change, not per call.
    """

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._text: re.Pattern[str] | None = None
        self._json: re.Pattern[bytes] | None = None

    # ---- registering

    def register(self, value: str | None) -> None:
        """Remember one secret value (and its cheap encodings); short or plain ones are
        ignored."""
        if not isinstance(value, str):
            return
        value = value.strip()
        if len(value) < MIN_LENGTH or _PLAIN.match(value):
            return
        forms = {value, quote(value, safe=""), orjson.dumps(value)[1:-1].decode()}
        decoded = unquote(value)
        if decoded != value:  # a value written URL-encoded (in a URL) is also shown decoded
            forms.add(decoded)
        new = {form for form in forms if len(form) >= MIN_LENGTH} - self._values
        if not new:
            return
        with self._lock:
            self._values |= new
            self._compile()

    def register_pair(self, user: str | None, password: str | None) -> None:
        """A user/password pair: the password, and `base64(user:password)` as HTTP Basic
        auth sends it."""
        self.register(password)
        if user and password:
            self.register(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))

    def register_header(self, value: str) -> None:
        """A credential header's value, and the credential after its scheme (`Bearer x` → x;
        `Basic b64` → b64 and the password inside it)."""
        self.register(value)
        match = _SCHEME.match(value)
        if match is None:
            return
        credential = match.group(1)
        self.register(credential)
        if value.strip().lower().startswith("basic"):
            try:
                pair = base64.b64decode(credential, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return
            user, _, password = pair.partition(":")
            self.register(password or user)

    def register_config(self, config: BaseModel, resolved: Iterable[str] = ()) -> None:
        """Every secret of a loaded configuration: the values resolved from `${env:}`/
        `${file:}` (`resolved`) and whatever `_walk` finds in the models."""
        for value in resolved:
            self.register(value)
        self._walk(config, None)

    def _walk(self, value: Any, name: str | None) -> None:
        if isinstance(value, SecretStr):
            self.register(value.get_secret_value())
        elif isinstance(value, BaseModel):
            fields = type(value).model_fields
            for field in fields:
                self._walk(getattr(value, field, None), field)
            extra = value.__pydantic_extra__ or {}
            for key, item in extra.items():
                self._walk(item, key)
            api_key, api_secret = getattr(value, "apiKey", None), getattr(value, "apiSecret", None)
            if isinstance(api_key, SecretStr) and isinstance(api_secret, SecretStr):
                self.register_pair(api_key.get_secret_value(), api_secret.get_secret_value())
        elif isinstance(value, dict):
            for key, item in value.items():
                if name == "headers" and isinstance(item, str) and is_credential_header(str(key)):
                    if "${" not in item:  # a template is rendered per message, not a secret
                        self.register_header(item)
                else:
                    self._walk(item, str(key))
        elif isinstance(value, list | tuple):
            for item in value:
                self._walk(item, name)
        elif isinstance(value, str):
            if name in SECRET_FIELD_NAMES and "${" not in value:
                self.register(value)
            for password in _URL_PASSWORD.findall(value):
                self.register(password)

    def clear(self) -> None:
        """Forget every value (tests)."""
        with self._lock:
            self._values = set()
            self._compile()

    def _compile(self) -> None:
        ordered = sorted(self._values, key=lambda v: (-len(v), v))
        if not ordered:
            self._text = self._json = None
            return
        self._text = re.compile("|".join(re.escape(v) for v in ordered))
        escaped = (orjson.dumps(v)[1:-1] for v in ordered)
        self._json = re.compile(b"|".join(re.escape(v) for v in escaped))

    # ---- scrubbing

    @property
    def active(self) -> bool:
        return self._text is not None

    def scrub(self, text: str) -> str:
        """`text` with every registered value replaced by `***`."""
        pattern = self._text
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def scrub_data(self, value: Any) -> Any:
        """A JSON-like value with every string (keys too) scrubbed; other values as they are.
        Returns the same object when nothing needed masking, so the common case copies
        nothing."""
        if self._text is None:
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            items = [(self.scrub_data(k), self.scrub_data(v)) for k, v in value.items()]
            pairs = zip(items, value.items(), strict=True)
            if all(k is k0 and v is v0 for (k, v), (k0, v0) in pairs):
                return value
            return dict(items)
        if isinstance(value, list | tuple):
            scrubbed = [self.scrub_data(item) for item in value]
            if all(a is b for a, b in zip(scrubbed, value, strict=True)):
                return value
            return type(value)(scrubbed)
        return value

    def in_json(self, data: bytes) -> bool:
        """Whether serialized JSON holds a registered value (as JSON escapes it): the cheap
        check before scrubbing a record structurally."""
        pattern = self._json
        return pattern is not None and pattern.search(data) is not None


#: The process's scrubber: the loader registers into it, every exit scrubs with it.
SCRUBBER = Scrubber()

register = SCRUBBER.register
scrub = SCRUBBER.scrub
scrub_data = SCRUBBER.scrub_data


def scrub_json(data: Any, encoded: bytes | None = None) -> bytes:
    """`data` serialized as JSON with no registered value in it. `encoded` (orjson's bytes of
    `data`, if the caller has them) is returned as is when it holds no secret."""
    if encoded is None:
        encoded = orjson.dumps(data)
    if not SCRUBBER.in_json(encoded):
        return encoded
    return orjson.dumps(SCRUBBER.scrub_data(data))


def register_config(config: BaseModel, resolved: Iterable[str] = ()) -> None:
    """Register a loaded configuration's secrets (`Scrubber.register_config`) and scrub this
    process's logs from now on. The loader calls it, so every process that holds the secrets
    (a worker, `herald replay`, `herald check`) scrubs its logs without each entry point
    having to remember to."""
    SCRUBBER.register_config(config, resolved)
    install_logging()


# --------------------------------------------------------------------------- logging


class ScrubFilter(logging.Filter):
    """Scrubs a log record's message (formatted with its args), exception text and stack, so
    no handler or formatter ever sees a secret. Never drops a record."""

    def __init__(self, scrubber: Scrubber = SCRUBBER) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        scrubber = self.scrubber
        if not scrubber.active:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for logging to report
            return True
        record.msg, record.args = scrubber.scrub(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrubber.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrubber.scrub(record.stack_info)
        return True


_installed: ScrubFilter | None = None


def install_logging(scrubber: Scrubber = SCRUBBER) -> ScrubFilter:
    """Scrub every log record of this process; idempotent.

    The filter runs in the log record factory, i.e. on every record as it is created, and is
    also added to the root logger's handlers present now. A filter on the root logger alone
    would miss records of child loggers (logging applies a logger's filters only to records
    logged on it), and the Faust worker replaces the root handlers when it sets up logging,
    after the app module was imported; the record factory survives both.
    """
    global _installed
    if _installed is not None:
        return _installed
    scrub_filter = ScrubFilter(scrubber)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub_filter.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    for handler in logging.getLogger().handlers:
        handler.addFilter(scrub_filter)
    _installed = scrub_filter
    return scrub_filter
