"""M (memory): a Herald worker holding ten million deduplication keys (``--memory-keys``).

The dedupe table (``agents/tables.py``: ``app.Table("dedupe", partitions=actionPartitions,
key_type=bytes, value_type=bytes)``) is recovered from its changelog, which Faust names
``<app id>-dedupe-changelog`` (the app id is the ``consumerGroupId``). The case writes
``--memory-keys`` records straight into that topic, as Herald's sink writes them (key: a
delivery id, value: ``str(epoch ms)``), spread by murmur2 of the key like any keyed record,
over ``actionPartitions`` partitions (the topic is created with that many first; see
``workload.preload_changelog`` for the last record of each partition). Then:

1. a worker with an empty table is started on its own data directory: its RSS is the base;
2. a worker is started on a new data directory: it recovers every key from the changelog.
   Start -> ``/ready`` (which waits for table recovery) is the recovery time; then its RSS;
3. it is stopped, the keys in its RocksDB stores are counted (all must be there), and it is
   started again on the same data directory: start -> ``/ready`` again (goal < 5 s) and RSS
   (goal < 500 MB at 10 million keys, issue 16; the goal is met when both starts are under it).

The first start really recovers every key from the changelog (the worker is given nothing
else), a fetched batch at a time (agents.recovery); the records' delivered-at times are the
time of the load, so the sweeper (agents.sink.expiry, 14 days by default) expires none of
them, but it does read them all once after each start, as in production.

RSS is VmRSS from ``/proc/<pid>/status`` of the worker process (``python -m faust`` itself:
the launcher starts no child; if one appears, its RSS is added), read 2 s after ready. The
broker's CPU seconds from each start to ready are kept with it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agents.embedded.broker import create_topics, run_sync
from agents.embedded.worker import WorkerError, WorkerProcess
from bench import herald, workload
from bench.cases import PARTITIONS, Context
from bench.harness import Measurement, broker_cpu, children, memory_mb
from bench.herald import WORKING, Tree

SETTLE_SECONDS = 2.0
READY_TIMEOUT = 900.0
NO_RECEIVER = "http://127.0.0.1:9"  # nothing is delivered in this case


def run(ctx: Context, tree: Tree = WORKING) -> None:
    """M for the workers of ``tree`` (``M@rev`` for a revision: its own topics, changelog and
    keys, loaded again)."""
    keys = ctx.args.memory_keys
    m = Measurement(
        "M" + tree.label,
        f"Herald worker holding {keys:,} dedupe keys",
        unit="MB",
        how=(
            "VmRSS of the worker process 2 s after /ready; recovery = process start -> /ready "
            "(includes Python start-up, the group join and the table recovery)"
        ),
    )
    name = ctx.name("M" + tree.slug)
    changelog = f"{name}-dedupe-changelog"
    # Compacted on Kafka, as Faust would create it (on tansu created as before, without configs).
    configs = {} if ctx.tansu else {changelog: {"cleanup.policy": "compact"}}
    create_topics(ctx.bootstrap, {name: PARTITIONS, changelog: PARTITIONS}, configs=configs)
    here = ctx.here("M" + tree.slug)
    content = herald.config(
        name=name,
        bootstrap=ctx.bootstrap,
        topic=name,
        receiver_url=NO_RECEIVER,
        partitions=PARTITIONS,
        max_in_flight=ctx.args.max_in_flight,
        tansu=ctx.tansu,
    )
    config_path = herald.write_config(here / "herald.yaml", content)
    try:
        m.details["empty_table"] = _start_measure_stop(
            ctx, herald.worker(config_path, here / "empty", tree)
        )
        load_s = run_sync(
            lambda: workload.preload_changelog(
                ctx.bootstrap, changelog, keys, PARTITIONS, last_alone=ctx.tansu
            )
        )
        print(f"  loaded {keys:,} dedupe records into {changelog} in {load_s:.1f}s", flush=True)
        worker = herald.worker(config_path, here / "worker", tree)
        first = m.details["first_start"] = _start_measure_stop(ctx, worker)
        stored = m.details["keys_stored"] = _stored_keys(worker.datadir)
        second = m.details["restart"] = _start_measure_stop(ctx, worker)
        m.details.update(
            keys_loaded=keys,
            changelog=changelog,
            changelog_partitions=PARTITIONS,
            restart_ready_s=second["ready_s"],
            first_recovery_ready_s=first["ready_s"],
            herald_tree=tree.rev or "working tree",
        )
        m.value = max(first["rss_mb"], second["rss_mb"])
        if stored is not None and stored < keys:
            m.error = f"only {stored:,} of {keys:,} keys in the worker's RocksDB stores"
    except (WorkerError, TimeoutError, RuntimeError, OSError) as exc:
        m.fail(exc)
    ctx.record(m)


def _start_measure_stop(ctx: Context, worker: WorkerProcess) -> dict[str, Any]:
    """Start the worker, time start -> /ready, read its memory after a moment, stop it.

    The broker's CPU from start to ready goes with it: a recovery is the broker serving the
    whole changelog, so that is the broker's side of the restart time."""
    started = time.monotonic()
    started_epoch = time.time()
    worker.start()
    try:
        worker.wait_http_ready(timeout=READY_TIMEOUT, path="/ready")
        ready_s = time.monotonic() - started
        broker: dict[str, Any] = {}
        broker_cpu(broker, ctx.broker_cpu, started_epoch, time.time(), 0)
        time.sleep(SETTLE_SECONDS)
        assert worker.pid is not None
        pids = [worker.pid, *children(worker.pid)]
        readings = [memory_mb(pid) for pid in pids]
        return {
            "ready_s": round(ready_s, 2),
            "rss_mb": round(sum(r.get("VmRSS", 0.0) for r in readings), 1),
            "peak_rss_mb": round(sum(r.get("VmHWM", 0.0) for r in readings), 1),
            "processes": len(pids),
            "broker_cpu_seconds": broker.get("broker_cpu_seconds"),
        }
    finally:
        worker.stop()


def _stored_keys(datadir: Path) -> int | None:
    """Keys in the dedupe table's RocksDB stores (all partitions; Faust's offset key excluded).

    Read after the worker stopped, so it proves the table holds what it recovered. None when
    rocksdict (faust-streaming's RocksDB driver) cannot be imported.
    """
    try:
        from rocksdict import AccessType, Options, Rdict
    except ImportError:
        return None
    total = 0
    for path in sorted(datadir.glob("**/dedupe-*.db")):
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            total += sum(1 for key in db.keys() if not key.startswith(b"__faust"))
        finally:
            db.close()
    return total
