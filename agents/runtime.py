"""What one worker's agents share: configuration, topics, tables, rules, clients, counters.

The resources themselves live in their own modules (agents.publisher, streams.avro.codecs,
streams.http1); this is where each agent finds them, and where they are closed at shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import faust

from agents.counters import Counters
from agents.evaluator_process import EvaluatorProcess
from agents.publisher import Publisher
from agents.rules import RuleSet
from agents.tables import Tables
from agents.topics import Topics
from streams.actions.base import DeliveryContext
from streams.avro.codecs import AvroCodecs
from streams.config.models import HeraldConfig, Target
from streams.http1 import Http1Client

log = logging.getLogger("herald")


@dataclass
class Runtime:
    app: faust.App
    config: HeraldConfig
    config_file: str
    topics: Topics
    tables: Tables
    rules: RuleSet
    counters: Counters = field(default_factory=Counters)
    stalls: list[Any] = field(default_factory=list)  # agents.ledger.Stall, refreshed by a timer
    #: The other integrations' sources by name (agents.integration_source), set by the app.
    sources: dict[str, Any] = field(default_factory=dict)
    #: The execution history (agents.history.History), set by the app with the admin API.
    history: Any = None
    #: This worker's Prometheus registry (agents.metrics), set by the app; /metrics serves it.
    metrics: Any = None
    codecs: AvroCodecs = field(init=False)
    publisher: Publisher = field(init=False)
    #: Where the handlers' JavaScript conditions run: a child process, started when needed.
    evaluator: EvaluatorProcess = field(default_factory=EvaluatorProcess)
    _http: aiohttp.ClientSession | None = None
    _http1: Http1Client | None = None
    _context: DeliveryContext | None = None

    def __post_init__(self) -> None:
        self.codecs = AvroCodecs(self.config)
        self.publisher = Publisher(self.app, self.config, self.codecs)

    @property
    def home(self) -> str:
        return self.config.home.name

    @functools.cached_property
    def targets(self) -> dict[str, Target]:
        return {t.name: t for t in self.config.targets}

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=max(100, self.config.herald.maxInFlight))
            # No cookies: deliveries are independent calls, and the jar costs time on each.
            self._http = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._http

    def delivery_context(self) -> DeliveryContext:
        """One context for every delivery: its clients hold the kept-alive connections."""
        if self._context is None or self._context.session.closed:
            if self._http1 is None:
                limit = max(100, self.config.herald.maxInFlight)
                self._http1 = Http1Client(limit_per_origin=limit)
            self._context = DeliveryContext(
                http=self._http1,
                session=self.http(),
                targets=self.targets,
                publish=self.publisher.publish,
            )
        return self._context

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._http1 is not None:
            await self._http1.close()
        await self.publisher.close()
        await self.codecs.close()
        await self.evaluator.close()
        await asyncio.sleep(0)
