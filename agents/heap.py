"""The worker's heap and Python's cyclic garbage collector.

A worker builds a large, long-lived heap before it consumes anything: Faust's app, services
and tables, aiokafka's clients, the compiled handlers, the web views. The source stage then
holds a fetched batch's records at once between its two passes (prepare every record, judge
the conditions in one round trip, finish every record: agents.sources), so their objects
survive young collections and are promoted. Promotions are what trigger Python's full
collections, and each full collection walks the whole heap, the start-up part included: on
the filter path that doubled the worker's CPU per record (issue 16's profile of F).

`freeze_startup_heap` moves what exists once the worker is up into the collector's permanent
generation (`gc.freeze`, the documented use: "freeze after start-up"), so full collections
walk only what was made since. Nothing is lost by it: those objects live as long as the
worker anyway, and a frozen object that becomes garbage is only reclaimed when its reference
count drops (as almost everything is), not by a cycle walk.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("herald.heap")


def freeze_startup_heap() -> int:
    """Collect once, then freeze what is left; the number of objects frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen out of the garbage collector: %d objects", frozen)
    return frozen
