"""The Avro codecs of a process: one per integration with a schema registry.

A codec holds its registry client and the schemas it fetched, so the worker (consuming and
publishing) and `herald replay` share one cache per integration instead of each keeping its
own. `schemas_ready` is the one wait for a record's writer schemas: while the registry
cannot answer, the caller waits (its batch unfinished) rather than dead-letter anything.
"""

from __future__ import annotations

from collections.abc import Callable

from streams.avro.codec import AvroCodec
from streams.avro.registry import RegistryClient, RegistryError
from streams.config.models import HeraldConfig, SendingProtocol
from streams.message import Envelope


class AvroCodecs:
    def __init__(self, config: HeraldConfig) -> None:
        self._config = config
        self._codecs: dict[str, AvroCodec] = {}

    def get(self, name: str) -> AvroCodec | None:
        """The codec of integration `name` if it has a schemaRegistry (LookupError for an
        unknown name)."""
        codec = self._codecs.get(name)
        if codec is None:
            integration = self._config.integration(name)
            if integration.schemaRegistry is None:
                return None
            codec = self._codecs[name] = AvroCodec(integration, RegistryClient(integration))
        return codec

    def for_records(self, name: str) -> AvroCodec | None:
        """How records consumed from integration `name` decode: its codec when its
        sendingProtocol is AVRO, None for STRING (or an integration no longer configured)."""
        try:
            integration = self._config.integration(name)
        except LookupError:
            return None
        if integration.sendingProtocol is not SendingProtocol.AVRO:
            return None
        return self.get(name)

    async def close(self) -> None:
        for codec in self._codecs.values():
            await codec.registry.close()
        self._codecs.clear()


async def schemas_ready(
    codec: AvroCodec, envelope: Envelope, on_wait: Callable[[RegistryError, float], None]
) -> None:
    """Return once the writer schemas `envelope`'s key and value name are known (or known
    not to exist); `on_wait(error, delay)` is told of each wait for the registry."""
    if codec.unknown_ids(envelope.raw_value, envelope.raw_key):
        await codec.wait_ready(envelope.raw_value, envelope.raw_key, on_wait)
