"""The evaluator process: where a worker runs its handlers' JavaScript conditions.

Handler authors are less trusted than the operator, and two things a condition can do are
beyond what QuickJS contains in-process (`streams.conditions`): a regular expression that
backtracks for hours (QuickJS checks its time limit only between bytecode instructions), and a
crash on QuickJS's out-of-memory path. So the worker (`agents.evaluator_process`) sends its
conditions here, a batch of evaluations per round trip, and watches: an evaluation that runs
past its deadline gets this process killed, one that crashes it kills only it, and either way
the worker knows which evaluation it was from the progress cell and carries on with a fresh
process.

The protocol, over this process's stdin and stdout (its stdout is moved to stderr so that no
stray print corrupts the protocol):

- worker → evaluator: a frame `(seq, defines, items)`: `defines` is `[(key, ConditionSpec)]`,
  the conditions this process has not seen, compiled once and kept by `key`; `items` is
  `[(key, message_json, meta_json)]`;
- evaluator → worker: a frame `(seq, verdicts)`: per item, True, False or the text of the
  ConditionError that dead-letters it;
- a frame is a 4-byte little-endian length and a pickle. Pickle is safe here: both ends are
  Herald's code and no message is unpickled, only strings the worker serialised;
- the progress cell, a small file both processes map (`PROGRESS`): `(seq, index)` of the
  evaluation under way, written before each one (`COMPILING` while compiling defines), and
  `(seq, len(items))` once the batch is done. It costs a store per evaluation and no syscall.

Run as `python -m streams.evaluator PROGRESS_FILE`; it ends at end of input, so it never
outlives the worker that holds its stdin.
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import pickle
import struct
import sys
from typing import IO, Any

from streams.conditions import Condition, ConditionSpec
from streams.errors import ConditionError

__all__ = ["COMPILING", "FRAME", "PROGRESS", "read_frame", "serve", "write_frame"]

FRAME = struct.Struct("<I")
PROGRESS = struct.Struct("<qq")  # (seq, index)
COMPILING = -1  # the index while a batch's new conditions compile


def write_frame(stream: IO[bytes], obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any | None:
    """The next frame, or None at end of input."""
    header = stream.read(FRAME.size)
    if len(header) < FRAME.size:
        return None
    (size,) = FRAME.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)


def _compile(spec: ConditionSpec) -> Condition | str:
    try:
        return spec.compile()
    except ConditionError as exc:  # compiled in the worker first, so not expected here
        return str(exc)


def serve(source: IO[bytes], sink: IO[bytes], progress: mmap.mmap) -> None:
    """Answer batches until end of input."""
    conditions: dict[int, Condition | str] = {}
    while (frame := read_frame(source)) is not None:
        seq, defines, items = frame
        PROGRESS.pack_into(progress, 0, seq, COMPILING)
        for key, spec in defines:
            conditions[key] = _compile(spec)
        verdicts: list[bool | str] = []
        for index, (key, message_json, meta_json) in enumerate(items):
            PROGRESS.pack_into(progress, 0, seq, index)
            condition = conditions.get(key)
            if condition is None:
                verdicts.append(f"internal error: condition {key} was never defined")
            elif isinstance(condition, str):
                verdicts.append(condition)
            else:
                try:
                    verdicts.append(condition.evaluate_json(message_json, meta_json))
                except ConditionError as exc:
                    verdicts.append(str(exc))
        PROGRESS.pack_into(progress, 0, seq, len(items))
        write_frame(sink, (seq, verdicts))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m streams.evaluator PROGRESS_FILE", file=sys.stderr)
        return 2
    faulthandler.enable()  # a crash says where on stderr, which is the worker's
    source = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    sink = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)  # a stray print goes to stderr, not into the protocol
    with open(argv[0], "r+b") as cell, mmap.mmap(cell.fileno(), PROGRESS.size) as progress:
        try:
            serve(source, sink, progress)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
