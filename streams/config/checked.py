"""A configuration checked once, for everything that starts from one: the worker, the CLI and
ilagent's daemon.

`load_checked` is the whole check a worker makes before it consumes (read, resolve, validate,
cross-check, compile every handler, `check_supported`), and it keeps what the check produced:
the compiled handlers are the ones the worker runs, so nothing compiles them a second time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from streams.config.capabilities import check_supported
from streams.config.loader import load_compiled
from streams.config.models import HeraldConfig
from streams.handlers import CompiledHandler


@dataclass(frozen=True, slots=True)
class Checked:
    """A configuration that passed every check, the file it came from, and its handlers
    compiled (in the order of `config.eventHandlers`)."""

    config: HeraldConfig
    path: str
    handlers: tuple[CompiledHandler, ...]


def load_checked(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Checked:
    """Load, validate and compile the configuration at `path` and check that this version of
    Herald can run it; raise ConfigError listing every problem.

    `environ` replaces `os.environ` for `${env:NAME}` references.
    """
    file = os.fspath(path)
    config, handlers = load_compiled(file, environ=environ)
    check_supported(config, file)
    return Checked(config, file, tuple(handlers))
