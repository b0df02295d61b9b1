"""The printed result: one table row per workload (Herald, baseline, ratio, goal, met), notes.

The goals are the performance issue's; a row whose Herald case did not run is left out, a
baseline that did not run shows ``-`` (and a goal that needs it is not judged).

With ``--before REV`` each Herald case also ran from REV: its row (``F@44ba04e``, against the
same baseline) comes right before the working tree's, and the table gets a column
``before -> after``: on the working tree's row, its headline figure / REV's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import Measurement, loadavg

F_GOAL_X = 2.0  # Herald / bare Faust (the first round's goal, still judged)
F_GOAL_RATE = 100_000.0  # msg/s per worker (issue 16)
F_GOAL_CONFLUENT_X = 0.8  # Herald / the hand-written confluent-kafka loop (issue 16)
A0_GOAL = 8000.0  # deliveries/s per worker (issue 16)
A0_GOAL_X = 1.0  # Herald / the naive sequential sender at 0 ms (issue 16)
A20_GOAL_X = 20.0  # Herald / sequential sender
L_GOAL_P99_MS = 50.0
L_GOAL_OVER_1S = 0
#: S: two workers' rate per core they used / one worker's (issue 16: on two cores the broker
#: competes with the workers, so the raw 2-worker / 1-worker ratio is reported beside it).
S_GOAL_PER_CORE_X = 0.9
M_GOAL_RSS_MB = 500.0  # at 10 million dedupe keys (issue 16)
M_GOAL_RESTART_S = 5.0

Results = dict[str, Measurement]


@dataclass
class Row:
    workload: str
    herald: str
    baseline: str
    ratio: str
    goal: str
    met: str  # yes / no / - (not judged)
    ratio_value: float | None = None
    #: With --before, on the working tree's row of a pair: its figure / the revision's.
    change: str = ""
    change_value: float | None = None

    def cells(self) -> tuple[str, ...]:
        return (self.workload, self.herald, self.baseline, self.ratio, self.goal, self.met)


# ---------------------------------------------------------------------------- formatting


def _num(value: float | None, unit: str = "", spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    return f"{format(value, spec)}{' ' + unit if unit else ''}"


def _ratio(a: Measurement | None, b: Measurement | None) -> float | None:
    if a is None or b is None or a.value is None or not b.value:
        return None
    return a.value / b.value


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "no")


def _figure(m: Measurement | None, text: Callable[[Measurement], str], label: str = "") -> str:
    """A cell: '-' when not run, 'ERROR' when it failed, else ``text(m)``."""
    if m is None:
        return "-"
    if m.error is not None and m.value is None:
        return f"{label}ERROR"
    return f"{label}{text(m)}"


def _rate(m: Measurement) -> str:
    return _num(m.value, m.unit)


# ---------------------------------------------------------------------------- rows


def _row_f(r: Results, b: str = "") -> Row:
    f, floor = r["F" + b], r.get("floor")
    x = _ratio(f, floor)
    return Row(
        "F" + b,
        _figure(f, _rate),
        _figure(floor, _rate, "bare Faust "),
        _x(x),
        f">= {F_GOAL_X:g}x",
        _met(None if x is None or f.error else x >= F_GOAL_X),
        x,
    )


def _row_f_confluent(r: Results, b: str = "") -> Row:
    f, loop = r["F"], r.get("F-confluent")
    x = _ratio(f, loop)
    return Row(
        "F'",
        _figure(f, _rate),
        _figure(loop, _rate, "confluent loop "),
        _x(x),
        f">= {F_GOAL_RATE:,.0f}/s, >= {F_GOAL_CONFLUENT_X:g}x",
        _met(
            None
            if x is None or f.value is None or f.error
            else f.value >= F_GOAL_RATE and x >= F_GOAL_CONFLUENT_X
        ),
        x,
    )


def _row_a(r: Results, case: str, b: str = "") -> Row:
    a, seq = r[case + b], r.get(f"{case}-sequential")
    x = _ratio(a, seq)
    if case == "A0":
        goal = f">= {A0_GOAL:,.0f}/s, >= {A0_GOAL_X:g}x"
        ok = None if a.value is None or x is None else a.value >= A0_GOAL and x >= A0_GOAL_X
    else:
        goal, ok = f">= {A20_GOAL_X:g}x", None if x is None else x >= A20_GOAL_X
    delay = a.details.get("receiver_delay_ms", 0)
    return Row(
        case + b,
        _figure(a, _rate),
        _figure(seq, lambda m: f"{_num(m.value)}/s", f"sequential ({delay:g} ms) "),
        _x(x),
        goal,
        _met(False if a.error else ok),
        x,
    )


def _latency_text(m: Measurement) -> str:
    d = m.details
    return (
        f"p99 {_num(m.value, 'ms')} (max {_num(d.get('max_ms'))}, {_num(d.get('over_1s'))} > 1 s)"
    )


def _row_l(r: Results, b: str = "") -> Row:
    lat, hop = r["L" + b], r.get("L-broker-hop" + b)
    d = lat.details
    ok = None
    if lat.value is not None:
        ok = lat.value <= L_GOAL_P99_MS and d.get("over_1s") == L_GOAL_OVER_1S
        ok = ok and not d.get("missing")
    return Row(
        "L" + b,
        _figure(lat, _latency_text),
        _figure(hop, lambda m: f"p99 {_num(m.value, 'ms')}", "broker alone, 1 hop "),
        "-",
        f"p99 <= {L_GOAL_P99_MS:g} ms, 0 > 1 s",
        _met(False if lat.error else ok),
    )


def per_core(m: Measurement | None) -> float | None:
    """Messages per second per core the workers used over the window (their CPU time over
    it, from /proc), or None without a CPU reading."""
    if m is None or m.value is None:
        return None
    cores = m.details.get("worker_cpu_cores")
    return m.value / cores if cores else None


def _per_core_text(m: Measurement) -> str:
    cores = m.details.get("worker_cpu_cores")
    rate = per_core(m)
    if rate is None:
        return _rate(m)
    return f"{_rate(m)} ({_num(rate)}/core, {cores:.2f} cores)"


def _row_s(r: Results, b: str = "") -> Row:
    """S: the ratio column is the raw 2-worker / 1-worker rate; the goal is on the rate per
    core each used (2 workers' per-core rate / 1 worker's), which the Herald cell shows."""
    two = r["S-2" + b]
    one = r.get(two.details.get("one_worker_case", "F" + b))
    x = _ratio(two, one)
    two_per_core, one_per_core = per_core(two), per_core(one)
    normalised = two_per_core / one_per_core if two_per_core is not None and one_per_core else None
    goal = f"per core >= {S_GOAL_PER_CORE_X:g}x"
    if normalised is not None:
        goal = f"per core {normalised:.2f}x >= {S_GOAL_PER_CORE_X:g}x"
    return Row(
        "S" + b,
        _figure(two, _per_core_text, "2 workers "),
        _figure(one, _per_core_text, "1 worker "),
        _x(x),
        goal,
        _met(None if normalised is None or two.error else normalised >= S_GOAL_PER_CORE_X),
        x,
    )


def _memory_text(m: Measurement) -> str:
    first = (m.details.get("first_start") or {}).get("rss_mb")
    again = (m.details.get("restart") or {}).get("rss_mb")
    restart_s = m.details.get("restart_ready_s")
    return f"RSS {_num(first)}/{_num(again)} MB, restart {_num(restart_s, 's', '.1f')}"


def _row_m(r: Results, b: str = "") -> Row:
    mem = r["M" + b]
    empty = mem.details.get("empty_table") or {}
    restart = mem.details.get("restart_ready_s")
    ok = None
    if mem.value is not None and restart is not None:
        ok = mem.value < M_GOAL_RSS_MB and restart < M_GOAL_RESTART_S
    return Row(
        "M" + b,
        _figure(mem, _memory_text),
        f"empty table {_num(empty.get('rss_mb'), 'MB')}" if empty else "-",
        "-",
        f"< {M_GOAL_RSS_MB:g} MB, < {M_GOAL_RESTART_S:g} s",
        _met(False if mem.error else ok),
    )


#: Each workload's row builder and the measurement that is its headline figure, in the
#: issue's order.
_WORKLOADS: tuple[tuple[str, Callable[[Results, str], Row]], ...] = (
    ("F", _row_f),
    ("A0", lambda r, b: _row_a(r, "A0", b)),
    ("A20", lambda r, b: _row_a(r, "A20", b)),
    ("L", _row_l),
    ("S-2", _row_s),
    ("M", _row_m),
)


def rows(results: Results, before: str | None = None) -> list[Row]:
    """The table rows of the workloads whose Herald case ran, in the issue's order.

    ``before`` is the label of ``--before``'s revision (``@44ba04e``): a workload measured
    from it gets its row right before the working tree's, and the working tree's row the
    before -> after ratio of their headline figures (after / before).
    """
    out: list[Row] = []
    for name, build in _WORKLOADS:
        earlier = results.get(name + before) if before else None
        if earlier is not None:
            out.append(build(results, before or ""))
        if name in results:
            row = build(results, "")
            if earlier is not None:
                row.change_value = _ratio(results[name], earlier)
                row.change = _x(row.change_value)
            out.append(row)
            if name == "F" and "F-confluent" in results:
                out.append(_row_f_confluent(results))
    return out


def table(table_rows: list[Row]) -> str:
    """The rows as aligned text; the before -> after column only when a row has a pair."""
    header: tuple[str, ...] = ("workload", "Herald", "baseline", "ratio", "goal", "met")
    cells = [r.cells() for r in table_rows]
    if any(r.change for r in table_rows):
        header += ("before -> after",)
        cells = [c + (r.change,) for c, r in zip(cells, table_rows, strict=True)]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def join(line: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()

    return "\n".join([join(header), join(tuple("-" * w for w in widths)), *map(join, cells)])


# ---------------------------------------------------------------------------- notes


def _cpu_note(m: Measurement) -> str | None:
    """Worker CPU and broker CPU over the measurement's window, side by side."""
    d = m.details
    per = "delivery" if m.unit == "deliveries/s" else "message"
    parts = []
    if d.get("worker_cpu_us_per_message") is not None:
        cores = d.get("worker_cpu_cores")
        text = f"worker {d['worker_cpu_us_per_message']:,.0f} us/{per}"
        parts.append(text + (f" ({cores:.2f} cores)" if cores is not None else ""))
    if d.get("broker_cpu_core_pct") is not None:
        per_message = d.get("broker_cpu_us_per_message")
        text = "broker " + (f"{per_message:,.0f} us/{per} " if per_message is not None else "")
        parts.append(text + f"({d['broker_cpu_core_pct']:.0f}% of a core)")
    return ", ".join(parts) or None


def _ramp_line(d: dict[str, Any]) -> str:
    """L's ramp (the same stream before the measured phase, not counted), for L and its hop."""
    line = (
        "the ramp before the phase (same stream, not counted): p50/p99/max "
        f"{_num(d.get('ramp_p50_ms'), '', '.1f')}/{_num(d.get('ramp_p99_ms'), '', '.1f')}/"
        f"{_num(d.get('ramp_max_ms'), '', '.1f')} ms"
    )
    if d.get("ramp_first_second_p99_ms") is not None:
        line += (
            f", its first second p99 {_num(d.get('ramp_first_second_p99_ms'), '', '.1f')} ms, "
            f"{d.get('ramp_over_1s')} > 1 s"
        )
    return line


def _detail_lines(m: Measurement) -> list[str]:
    """The facts worth reading under the table for one measurement."""
    d = m.details
    facts: list[str] = []
    cpu = _cpu_note(m)
    if cpu:
        facts.append(f"CPU {cpu}")
    if d.get("receiver_cpu_us_per_request") is not None:
        facts.append(f"receiver {d['receiver_cpu_us_per_request']:.0f} us/request")
    if d.get("in_process_rate") is not None:
        facts.append(f"in-process first-to-last {d['in_process_rate']:,.0f}/s")
    if d.get("seconds") is not None:
        facts.append(f"window {d['seconds']:.1f}s")
    if d.get("startup_to_first_consumption_s") is not None:
        facts.append(f"startup excluded {d['startup_to_first_consumption_s']}s")
    if d.get("deliveries_expected") is not None:
        facts.append(f"delivered {d.get('deliveries_received')}/{d['deliveries_expected']}")
    if d.get("all_committed_after_s") is not None:
        facts.append(f"offsets committed at +{d['all_committed_after_s']}s")
    if d.get("generations_joined") and len(d["generations_joined"]) > 1:
        facts.append(f"group generations joined per worker {d['generations_joined']}")
    if m.name in ("L", "floor-latency", "L-broker-hop") and d.get("p50_ms") is not None:
        facts.append(
            f"p50/p90/p99/max {_num(d.get('p50_ms'), '', '.1f')}/{_num(d.get('p90_ms'), '', '.1f')}"
            f"/{_num(d.get('p99_ms'), '', '.1f')}/{_num(d.get('max_ms'), '', '.1f')} ms"
        )
    if d.get("source_hop_p50_ms") is not None:
        facts.append(
            f"source hop p50/p99 {d['source_hop_p50_ms']:.0f}/{d['source_hop_p99_ms']:.0f} ms, "
            f"sink hop + HTTP {d['sink_hop_p50_ms']:.0f}/{d['sink_hop_p99_ms']:.0f} ms"
        )
    for key in ("p50_by_sixth_ms", "by_sixth"):
        if d.get(key):
            sixths = "/".join(_num(v, "", ".0f") for v in d[key])
            facts.append(f"p50 by sixth of the phase {sixths} ms")
    if d.get("ramp_p99_ms") is not None:
        facts.append(_ramp_line(d))
    if d.get("all_delivered_after_last_send_s") is not None:
        facts.append(f"all delivered {d['all_delivered_after_last_send_s']}s after the last send")
    if m.name == "M":
        facts += _memory_lines(d)
    if d.get("note"):
        facts.append(str(d["note"]))
    for key in ("warning", "rebalance", "missing_topics"):
        if d.get(key):
            facts.append(f"WARNING: {d[key]}")
    return facts


def _memory_lines(d: dict[str, Any]) -> list[str]:
    out = []
    for label, key in (
        ("empty table", "empty_table"),
        ("first start", "first_start"),
        ("restart", "restart"),
    ):
        s = d.get(key)
        if s:
            broker = s.get("broker_cpu_seconds")
            out.append(
                f"{label}: ready {s['ready_s']}s, RSS {s['rss_mb']} MB (peak {s['peak_rss_mb']})"
                + (f", broker CPU {broker:.1f}s" if broker is not None else "")
            )
    if d.get("keys_stored") is not None:
        out.append(f"{d['keys_stored']:,} of {d.get('keys_loaded', 0):,} keys in RocksDB")
    return out


def render(results: Results, machine: dict[str, Any], settings: dict[str, Any]) -> str:
    """The whole printed report: header, table, notes, and how each figure was measured."""
    herald = settings.get("herald", {})
    before = settings.get("before")
    lines = [
        "Herald benchmark",
        "",
        table(rows(results, before["label"] if before else None)),
        "",
        "notes:",
        f"  machine: {machine['cpu']}, {machine['nproc']} cores; Python {machine['python']}; "
        f"faust-streaming {machine['faust-streaming']}; aiokafka {machine['aiokafka']}; "
        f"confluent-kafka {machine['confluent-kafka']}",
        f"  broker:  {machine['broker']}; topics of {settings['partitions']} partitions; "
        "events ~200 B JSON, 10,000 distinct keys",
        f"  herald:  commit {machine['herald_commit']}"
        + (
            " + uncommitted changes in agents/ or streams/"
            if machine["herald_worktree_modified"]
            else ""
        )
        + f"; maxInFlight {herald.get('maxInFlight')}, actionPartitions "
        f"{herald.get('actionPartitions')}, commitIntervalSeconds "
        f"{herald.get('commitIntervalSeconds')}",
        f"  load:    {machine['loadavg_at_start']} (1/5/15 min) at start, {loadavg()} at the end; "
        "anything else running on the machine lowers the figures",
        *_before_lines(before),
        "",
        "how each figure is measured:",
    ]
    for m in results.values():
        lines.append(f"  {m.name}: {m.description}")
        if m.how:
            lines.append(f"      {m.how}")
        facts = _detail_lines(m)
        if facts:
            lines.append("      " + "; ".join(facts))
        if m.error:
            lines.append(f"      ERROR: {m.error}")
    lines += ["", _closing(settings.get("broker", "tansu"))]
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters at a word, with an ellipsis when it was cut."""
    if len(text) <= width:
        return text
    return text[:width].rsplit(" ", 1)[0] + " ..."


def _before_lines(before: dict[str, Any] | None) -> list[str]:
    """The notes on ``--before``: the revision, where its workers ran from, the order of each
    pair, and which way the before -> after ratio is better."""
    if not before:
        return []
    order = "; ".join(
        f"{case}: {' then '.join(names)}" for case, names in before.get("order", {}).items()
    )
    lines = [
        f"  before:  {before['label']} = {before['commit']} ({_clip(before['subject'], 80)}), its "
        f"workers started from a git worktree ({before.get('worktree', '-')}); same broker, "
        "same topics and baselines",
        f"           order of each pair (the first of a pair alternates): {order or '-'}",
        "           before -> after = the working tree's figure / the revision's: above 1 is "
        "faster for msg/s and deliveries/s, below 1 is better for L (p99 ms) and M (RSS MB)",
    ]
    imports = before.get("imports") or {}
    for side, roots in imports.items():
        lines.append(f"           {side} workers import agents from {roots.get('agents')}")
    return lines


def _closing(broker: str) -> str:
    """The paragraph under the notes: what the broker means for the figures."""
    common = (
        "Throughput figures drain a topic loaded before the workers started (startup not "
        "counted). Broker CPU is its process's user + system time over each window, from "
        "/proc, next to the workers'; the broker runs on the same cores, so its share is "
        "taken from Herald's. "
    )
    if broker == "tansu":
        return common + (
            "Latency on tansu is mostly broker wait: it answers a waiting fetch late, and "
            "its one-hop latency grows as records accumulate (see L-broker-hop's p50 by sixth); "
            "Herald's path is two hops through the same broker. A bare Faust agent waits up to "
            "1.5 s per fetch (faust-streaming fixes fetch_max_wait_ms at 1500)."
        )
    return common + (
        "Kafka answers a waiting fetch as soon as records arrive, so the fetch wait is not "
        "latency there; Herald's path is two hops through the broker (source topic, then "
        "<prefix>-actions) before its HTTP call, L-broker-hop is one."
    )
