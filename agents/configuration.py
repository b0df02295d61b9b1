"""The one place a command refuses an invalid configuration: one line per problem, then what
is refused, on stderr, and exit code 2.

The worker, `herald check`/`audit`/... and `herald ilagent daemon` all start here, so an
invalid file reads the same whichever of them found it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from streams.config.checked import Checked, load_checked
from streams.config.loader import config_path_from_env
from streams.errors import ConfigError

#: The exit code of a command refused for its configuration.
INVALID = 2


def load_or_exit(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    verb: str = "",
    final: str | None = None,
) -> Checked:
    """The checked configuration at `path` (None: `$HERALD_CONFIG`, else the default), or
    SystemExit(2) after printing every problem and `herald: configuration PATH is invalid`
    followed by `verb` (the worker adds "; not starting"). `final` replaces that last line
    for a command that names the file its own way (ilagent's generated one)."""
    path = path or config_path_from_env()
    try:
        return load_checked(path, environ)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print(final or f"herald: configuration {path} is invalid{verb}", file=sys.stderr)
        raise SystemExit(INVALID) from None
