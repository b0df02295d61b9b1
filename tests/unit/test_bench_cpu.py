"""The benchmark's worker CPU includes the worker's child processes (its condition
evaluator), live or already reaped, not only its own pid's."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.harness import cpu_seconds, tree_cpu

BURN = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"


def test_a_live_childs_cpu_is_counted() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN + "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while (cpu_seconds(child.pid) or 0) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        own, tree = cpu_seconds(os.getpid()), tree_cpu(os.getpid())
        assert own is not None and tree is not None
        assert tree - own >= 0.4
    finally:
        child.kill()
        child.wait()


def test_a_reaped_childs_cpu_is_counted() -> None:
    before_own, before_tree = cpu_seconds(os.getpid()), tree_cpu(os.getpid())
    subprocess.run([sys.executable, "-c", BURN], check=True)
    own, tree = cpu_seconds(os.getpid()), tree_cpu(os.getpid())
    assert None not in (before_own, before_tree, own, tree)
    assert (tree - before_tree) - (own - before_own) >= 0.4  # type: ignore[operator]
