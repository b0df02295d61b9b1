"""The source agent's topics follow the handlers: no restart, no list of topics to keep.

At start the worker subscribes to the topics of the configuration's handlers (and
`herald.extraSourceTopics`). Once the rules table is loaded, a timer compares the topics of
the active handlers on the home integration (the configuration's and those put at runtime:
`herald rules put`) with what the source agent consumes, every second:

- a topic that gained its first handler is added to the subscription, so every worker of the
  group starts consuming it within seconds (each does the same, and the group rebalances);
- a topic that lost its last handler is dropped: its partitions are revoked through the
  ledger as in any rebalance, and the group's committed offset for it is kept, so a handler
  added later goes on from there.

Faust resubscribes after a change at most once per `HeraldConductor.resubscribe_seconds`, and
forgets a change that comes while the group is rebalancing; the timer asks again until the
subscription has the topics wanted. A topic that does not exist yet when its handler comes is
consumed once it does: the consumer sees it at its next metadata refresh
(`agents.app.METADATA_REFRESH_MS`, 10 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import faust
from faust.types import TopicT

from agents.batches import BatchChannel
from agents.topics import RAW
from streams.config.models import HeraldConfig
from streams.handlers import HandlerIndex

log = logging.getLogger("herald.subscriptions")


def home_topics(index: HandlerIndex, config: HeraldConfig) -> set[str]:
    """The source agent's topics: the home integration's topics with an active handler in
    `index` (the configuration's at start, then the rules table's), and extraSourceTopics."""
    home = config.home.name
    names = {topic for integration, topic in index.topics() if integration == home}
    return names | set(config.herald.extraSourceTopics)


def integration_topics(index: HandlerIndex, integration: str) -> set[str]:
    """The topics of `integration` with an active handler in `index`."""
    return {topic for name, topic in index.topics() if name == integration}


class SourceTopics:
    def __init__(
        self,
        app: faust.App,
        channel: BatchChannel,
        wanted: Callable[[], set[str]],
        initial: Iterable[str],
    ) -> None:
        self._app = app
        self._channel = channel
        self._wanted = wanted
        self._topics: dict[str, TopicT] = {}
        for name in sorted(set(initial)):
            self._add(name)

    @property
    def names(self) -> set[str]:
        return set(self._topics)

    def sync(self) -> tuple[list[str], list[str]]:
        """Subscribe to topics that gained a handler, drop those that lost their last one;
        returns (added, removed)."""
        wanted = self._wanted()
        added = sorted(wanted - self._topics.keys())
        removed = sorted(self._topics.keys() - wanted)
        for name in added:
            self._add(name)
        for name in removed:
            self._app.topics.discard(self._topics.pop(name))
        if added or removed:
            log.info(
                "source topics changed with the handlers: added %s, removed %s",
                ", ".join(added) or "none",
                ", ".join(removed) or "none",
            )
        conductor = self._app.topics
        if not (added or removed) and not self._app.rebalancing:
            conductor.resubscribe_if_missing(self._topics.keys())  # type: ignore[attr-defined]
        return added, removed

    def _add(self, name: str) -> None:
        topic = self._app.topic(name, **RAW)
        self._topics[name] = topic
        self._app.topics.add_batch_channel(topic, self._channel)  # type: ignore[attr-defined]
