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

It then makes the collector run less often (`THRESHOLDS`). Python's defaults (700, 10, 10)
start a young collection every 700 net allocations of container objects; a delivery makes
dozens (futures, tasks, dicts of the request and its records), and many of them are alive
at that moment (a fetched batch, the records waiting in lanes, their writes' futures), so
they are walked, promoted and walked again. `perf record` of a worker in bench A0 put 22 % of
its CPU in the collector (gc_collect_main, visit_decref, visit_reachable), none of it
visible to py-spy. What the collector is for, reclaiming reference cycles, does not need it
that often: garbage without cycles is freed by reference counting at once, whatever the
thresholds. A young generation of 50,000 objects is a few MB, and walking it a few ms.
Timed with `gc.callbacks` in a worker draining bench A0's 200,000 deliveries: at the defaults
18,111 young, 1,645 middle and 151 full collections took 13.1 s of an 86 s drain (a full one
~40 ms, a latency spike each time); at `THRESHOLDS` 372, 29 and 4 took 2.1 s of 76 s. Both
reclaimed the same 2,224 objects (cycles made at start-up): in steady state the worker makes
no cyclic garbage to speak of. Deliveries/s in single A0 runs on one machine: 1,875-2,320 at
the defaults; 2,463 at 10,000; 2,447 at 25,000; 2,514-2,683 at 50,000; 2,481 at 100,000.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("herald.heap")

#: The collector's thresholds once the worker is up (gc.set_threshold): a young collection
#: every 50,000 net allocations, the middle generation every 20 of those, the full one every
#: 20 of those (and, as always, only when the long-lived objects grew by a quarter).
THRESHOLDS = (50_000, 20, 20)


def freeze_startup_heap() -> int:
    """Collect once, freeze what is left, and set the collector's `THRESHOLDS`; the number
    of objects frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    frozen = gc.get_freeze_count()
    log.info(
        "start-up heap frozen out of the garbage collector: %d objects; collector thresholds %s",
        frozen,
        THRESHOLDS,
    )
    return frozen
