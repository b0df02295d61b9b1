"""`${env:NAME}` and `${file:PATH}` in a configuration: resolved once, remembered, masked.

Resolving records where each value went, which references did not resolve (and why, as
problems), and which values are secrets, so that no problem line can show one: every value
that came from a reference and every value of a secret field (password, apiKey, ...) is
masked in the lines reported. The rules of the syntax are in `streams.config.loader`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config.messages import Loc
from streams.secrets import MASK, SECRET_FIELD_NAMES

#: Fields whose values never appear in an error message or `herald check` (the scrubber's list).
SECRET_FIELDS = SECRET_FIELD_NAMES

_REFERENCE = re.compile(r"\$?\$\{(env|file):([^}]*)\}")
#: A reference anywhere in a text (`${env:NAME}`, `${file:PATH}`).
REFERENCE = _REFERENCE
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLAIN_VALUE = re.compile(r"^(?:true|false|yes|no|on|off|[-+]?\d+(?:\.\d+)?)$", re.IGNORECASE)


@dataclass
class References:
    """The references of one file: what they resolved to, where, and what failed."""

    file: str
    environ: Mapping[str, str]
    # location → the values substituted there from ${env:}/${file:}
    resolved: dict[Loc, list[str]] = field(default_factory=dict)
    failed: set[Loc] = field(default_factory=set)  # values whose reference did not resolve
    secrets: set[str] = field(default_factory=set)
    problems: list[tuple[Loc, str]] = field(default_factory=list)  # why a reference failed

    def resolve(self, value: Any, loc: Loc) -> Any:
        """The data with every `${env:}`/`${file:}` reference replaced, recursively; the values
        of secret fields are noted so no problem line can show them."""
        if isinstance(value, dict):
            resolved = {key: self.resolve(item, (*loc, key)) for key, item in value.items()}
            self.secrets.update(
                item
                for key, item in resolved.items()
                if key in SECRET_FIELDS and _text(item) and (*loc, key) not in self.failed
            )
            return resolved
        if isinstance(value, list):
            return [self.resolve(item, (*loc, i)) for i, item in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return _REFERENCE.sub(lambda match: self._replace(match, loc), value)
        return value

    def _replace(self, match: re.Match[str], loc: Loc) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)
        kind, ref = match.group(1), match.group(2)
        value = self._lookup_env(ref, loc) if kind == "env" else self._read_file(ref, loc)
        if value is None:
            self.failed.add(loc)
            return match.group(0)
        self.resolved.setdefault(loc, []).append(value)
        if value:
            self.secrets.add(value)
        return value

    def _lookup_env(self, name: str, loc: Loc) -> str | None:
        if not _ENV_NAME.match(name):
            self._add_reference_problem(
                loc,
                f"${{env:{name}}} is not a valid reference; write ${{env:NAME}} with letters, "
                "digits and _ only",
            )
            return None
        if name not in self.environ:
            self._add_reference_problem(
                loc,
                f"environment variable {name} is not set; set it before starting Herald or "
                f"replace ${{env:{name}}} with a value",
            )
            return None
        return self.environ[name]

    def _read_file(self, name: str, loc: Loc) -> str | None:
        if not name.strip():
            self._add_reference_problem(loc, "${file:} names no file; write ${file:PATH}")
            return None
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = Path(self.file).parent / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            self._add_reference_problem(
                loc,
                f"file {str(path)!r} named by ${{file:{name}}} does not exist; create it or "
                "fix the path",
            )
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            self._add_reference_problem(
                loc,
                f"cannot read file {str(path)!r} named by ${{file:{name}}} ({reason}); fix "
                "the path or the file",
            )
        return None

    def _add_reference_problem(self, loc: Loc, message: str) -> None:
        self.problems.append((loc, message))

    def related_values(self, loc: Loc) -> list[str]:
        """Values from ${env:}/${file:} an error at `loc` may echo: those at, inside or
        containing `loc` (a model-level validator sees every field of its model)."""
        return [
            value
            for where, values in self.resolved.items()
            if where[: len(loc)] == loc or loc[: len(where)] == where
            for value in values
            if value
        ]

    def mask_line(self, line: str) -> str:
        """Mask every resolved value in a line (the file name aside, which holds none); values
        that cannot be secrets (numbers, booleans) and very short ones are left, since masking
        them everywhere would garble lines ("expected *** or false")."""
        head = f"{self.file}: "
        prefix, rest = (head, line[len(head) :]) if line.startswith(head) else ("", line)
        maskable = {value for value in self.secrets if not _PLAIN_VALUE.match(value)}
        return prefix + mask(rest, maskable, min_length=4)


def mask(text: str, secrets: set[str], *, min_length: int) -> str:
    """Replace each secret value (longest first) with ***. Very short values are only masked
    where the error concerns them, since masking "1" everywhere would garble every line."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= min_length:
            text = text.replace(secret, MASK)
    return text


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)
