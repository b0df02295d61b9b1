"""``python -m bench.run --before REV``: its arguments, its worktree, its table.

The worktree test checks the part the figures depend on: a worker started from the
revision's worktree imports that worktree's ``agents`` and ``streams``, not the repository's
(which the editable install also points at). It asks a Python started with a real worker's
working directory and environment (``bench.herald.worker``), and plants a module in the
worktree only, which that Python must find and the working tree's must not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.embedded.worker import REPO_ROOT
from bench import revision
from bench.cases import Context
from bench.harness import Measurement
from bench.herald import WORKING, Tree, worker
from bench.report import rows, table
from bench.run import parse_args

MARKER = "_bench_before_marker"


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


# ---------------------------------------------------------------------------- arguments


def test_before_resolves_the_revision_git_names() -> None:
    args = parse_args(["--cases", "floor,F,A0", "--before", "HEAD"])
    info = args.before_info
    assert info["commit"] == _git("rev-parse", "HEAD")
    assert info["short"] == _git("rev-parse", "--short", "HEAD")
    assert info["label"] == "@" + info["short"]
    assert info["subject"] == _git("log", "-1", "--format=%s", "HEAD")


def test_without_before_nothing_is_compared() -> None:
    assert parse_args(["--cases", "F"]).before_info is None


def test_an_unknown_revision_is_refused_with_the_option_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--cases", "F", "--before", "no-such-revision-of-herald"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--before" in err and "no-such-revision-of-herald" in err


def test_before_without_a_herald_case_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--cases", "floor,F-confluent", "--before", "HEAD"])
    assert "selects none of" in capsys.readouterr().err


def test_the_side_that_goes_first_alternates_from_one_case_to_the_next(tmp_path: Path) -> None:
    args = parse_args(["--cases", "F,A0,L", "--before", "HEAD"])
    before = Tree(rev="abc1234", root=tmp_path)
    ctx = Context(broker=None, args=args, workdir=tmp_path, run_id="t")  # type: ignore[arg-type]
    assert ctx.sides("F") == (WORKING,)  # no --before worktree yet: the working tree alone
    ctx.before = before
    assert ctx.sides("F") == (before, WORKING)
    assert ctx.sides("A0") == (WORKING, before)
    assert ctx.sides("L") == (before, WORKING)
    assert ctx.order == {
        "F": ["F@abc1234", "F"],
        "A0": ["A0", "A0@abc1234"],
        "L": ["L@abc1234", "L"],
    }


# ---------------------------------------------------------------------------- table


def _m(name: str, value: float, unit: str, **details: object) -> Measurement:
    return Measurement(name, name, value=value, unit=unit, details=dict(details))


def test_each_pair_is_two_rows_and_the_working_trees_carries_after_over_before() -> None:
    results = {
        m.name: m
        for m in (
            _m("floor", 8000.0, "msg/s"),
            _m("F@abc1234", 40000.0, "msg/s"),
            _m("F", 30000.0, "msg/s"),
            _m("A0", 2500.0, "deliveries/s", receiver_delay_ms=0.0),
            _m("A0@abc1234", 2000.0, "deliveries/s", receiver_delay_ms=0.0),
            _m("A0-sequential", 6000.0, "deliveries/s"),
        )
    }
    table_rows = rows(results, "@abc1234")
    assert [r.workload for r in table_rows] == ["F@abc1234", "F", "A0@abc1234", "A0"]
    by_name = {r.workload: r for r in table_rows}
    # both sides against the one baseline run
    assert by_name["F@abc1234"].ratio_value == pytest.approx(40000.0 / 8000.0)
    assert by_name["F"].ratio_value == pytest.approx(30000.0 / 8000.0)
    assert by_name["A0@abc1234"].baseline == by_name["A0"].baseline
    # before -> after on the working tree's row only
    assert by_name["F"].change_value == pytest.approx(30000.0 / 40000.0)
    assert by_name["A0"].change_value == pytest.approx(2500.0 / 2000.0)
    assert by_name["F@abc1234"].change == "" and by_name["A0@abc1234"].change == ""
    text = table(table_rows)
    header, _, *lines = text.splitlines()
    assert header.rstrip().endswith("before -> after")
    assert lines[1].startswith("F ") and lines[1].endswith("0.75x")
    assert lines[3].startswith("A0 ") and lines[3].endswith("1.25x")


def test_a_run_without_before_has_no_before_column() -> None:
    results = {"F": _m("F", 30000.0, "msg/s"), "floor": _m("floor", 8000.0, "msg/s")}
    text = table(rows(results))
    assert "before -> after" not in text
    assert [r.workload for r in rows(results)] == ["F"]


# ---------------------------------------------------------------------------- worktree


def test_workers_of_a_worktree_import_its_packages(tmp_path: Path) -> None:
    head = _git("rev-parse", "HEAD")
    path = tmp_path / "before"
    tree = revision.add_worktree(head, path)
    try:
        assert tree.root == path and tree.rev == _git("rev-parse", "--short", "HEAD")
        (path / "agents" / f"{MARKER}.py").write_text("")
        roots = revision.check_imports(tree, tmp_path / "probe-before")
        assert Path(roots["agents"]).parent == path / "agents"
        assert Path(roots["streams"]).parent == path / "streams"
        assert _finds_marker(tree, tmp_path / "marker-before")
        assert not _finds_marker(WORKING, tmp_path / "marker-working")
        working = revision.check_imports(WORKING, tmp_path / "probe-working")
        assert Path(working["agents"]).parent == REPO_ROOT / "agents"
    finally:
        revision.remove_worktree(path)
    assert not path.exists()
    assert str(path) not in _git("worktree", "list", "--porcelain")


def _finds_marker(tree: Tree, workdir: Path) -> bool:
    """Whether a Python started like a worker of ``tree`` imports the planted module."""
    process = worker(workdir / "herald.yaml", workdir, tree)
    done = subprocess.run(
        [sys.executable, "-c", f"import agents.{MARKER}"],
        cwd=process.cwd,
        env=process._environment(),
        capture_output=True,
    )
    return done.returncode == 0


def test_a_worktree_importing_the_repository_is_refused(tmp_path: Path) -> None:
    """A tree whose root is not where its packages come from (here a directory without
    them, so the repository's are imported) must stop the run, not measure the wrong code."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(revision.RevisionError, match="not their own packages"):
        revision.check_imports(Tree(rev="0000000", root=empty), tmp_path / "probe")
