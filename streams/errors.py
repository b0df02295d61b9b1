"""One error hierarchy for the domain.

Every error says what went wrong in words a user can act on; the agents decide from the type
alone whether to retry, dead-letter or refuse to start.
"""

from __future__ import annotations


class HeraldError(Exception):
    """Base of every error Herald raises on purpose."""


class ConfigError(HeraldError):
    """The configuration is invalid. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DecodeError(HeraldError):
    """A record's bytes could not be decoded into a message."""


class ConditionError(HeraldError):
    """A condition did not parse, threw, or exceeded its time or memory limit."""


class TemplateError(HeraldError):
    """A template has a syntax error, or rendering it failed."""


class DeliveryError(HeraldError):
    """Delivering an action failed.

    `retryable` separates transient failures (connection errors, timeouts, 5xx, 429) from
    permanent ones (other 4xx, invalid request); `retry_after` carries a server's
    Retry-After in seconds when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
