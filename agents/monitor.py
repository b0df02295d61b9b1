"""Faust's Monitor without its per-record bookkeeping.

Faust's default Monitor records every table read and write, every produced record and every
stream event (timestamps, deques, counters) for statistics Herald does not serve: Herald's own
counters are on `/herald/stats`. At thousands of deliveries a second those hooks are a few
percent of the worker's CPU (the table sensors alone ~2% in the deliver-all profile). The
Monitor is a Faust setting meant for replacement; rebalance, commit and assignment hooks keep
Faust's behaviour.
"""

from __future__ import annotations

from typing import Any

from faust.sensors import Monitor


class HeraldMonitor(Monitor):
    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: Any, key: Any) -> None:
        pass

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass
