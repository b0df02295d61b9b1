"""Summarise a py-spy profile in collapsed-stack form (``py-spy record --format raw``).

    python -m bench.profile bench/results/profile-herald-all.txt [--top 25]

Prints the functions with the most samples on top of the stack (self) and the functions that
appear anywhere in the most samples (inclusive, each function counted once per stack), with
their share of all samples. ``bench.run --profile`` writes such files; speedscope
(https://www.speedscope.app) and flamegraph.pl read them too.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``; line numbers merged."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{match.group('func')} ({short})"


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        stack, count = match.group(1), int(match.group(2))
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own, inclusive


def render(path: Path, top: int = 25) -> str:
    total, own, inclusive = summarise(path)
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples", "", "self (on top of the stack):"]
    for name, count in own.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    lines += ["", "inclusive (anywhere on the stack):"]
    for name, count in inclusive.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for file in args.files:
        print(render(file, args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
