"""A git revision's Herald beside the working tree, for ``python -m bench.run --before REV``.

The revision is checked out as a detached ``git worktree`` in the run's work directory; its
workers start with the worktree as their working directory, so its own ``agents`` and
``streams`` come first on their path (:class:`bench.herald.Tree`). No pip install is needed:
its dependencies are the installed ones. Before any case runs, :func:`import_roots` asks a
Python started exactly like such a worker (same interpreter, working directory and
environment) where it imports ``agents`` and ``streams`` from, and :func:`check_imports`
refuses to run when that is not the worktree, since the "before" figures would then be
the working tree's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agents.embedded.worker import REPO_ROOT
from bench.herald import Tree, worker

#: What the probe prints: where each of Herald's packages is imported from.
_PROBE = "import agents, streams; print(agents.__file__); print(streams.__file__)"


class RevisionError(RuntimeError):
    """A revision that git does not know, a worktree git would not make, or a worktree whose
    workers would not import their own code."""


def _git(*argv: str, timeout: float = 120.0) -> str:
    try:
        done = subprocess.run(
            ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RevisionError(f"git {' '.join(argv)} failed: {exc}") from exc
    if done.returncode != 0:
        raise RevisionError(f"git {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(rev: str) -> dict[str, str]:
    """The commit ``rev`` names (any revision git accepts: hash, tag, branch, ``HEAD~1``),
    for the notes and the JSON file: ``rev`` as given, full and short hash, label, subject."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RevisionError as exc:
        raise RevisionError(
            f"{rev!r} is not a commit of the repository at {REPO_ROOT} ({exc}); give a hash, "
            "tag or branch that `git rev-parse` knows, e.g. --before HEAD~1"
        ) from exc
    short = _git("rev-parse", "--short", commit)
    return {
        "rev": rev,
        "commit": commit,
        "short": short,
        "label": Tree(rev=short).label,
        "subject": _git("log", "-1", "--format=%s", commit),
    }


def add_worktree(commit: str, path: Path) -> Tree:
    """Check ``commit`` out as a detached worktree at ``path`` (which must not exist yet)."""
    _git("worktree", "add", "--detach", str(path), commit)
    return Tree(rev=_git("rev-parse", "--short", commit), root=path)


def remove_worktree(path: Path) -> None:
    """Remove the worktree at ``path`` and git's record of it (what the run added)."""
    _git("worktree", "remove", "--force", str(path))


def import_roots(tree: Tree, workdir: Path) -> dict[str, str]:
    """Where a worker of ``tree`` imports ``agents`` and ``streams`` from: a Python started
    with a real worker's command environment and working directory (bench.herald.worker)
    prints their ``__file__``."""
    process = worker(workdir / "herald.yaml", workdir, tree)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            cwd=process.cwd,
            env=process._environment(),  # the very environment the worker would get
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RevisionError(f"could not ask where {tree.root} imports from: {exc}") from exc
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        raise RevisionError(
            f"importing agents and streams from {process.cwd} failed: {done.stderr.strip()}"
        )
    return {"agents": lines[0], "streams": lines[1]}


def check_imports(tree: Tree, workdir: Path) -> dict[str, str]:
    """:func:`import_roots`, refusing packages that come from anywhere but the tree's root."""
    roots = import_roots(tree, workdir)
    home = (tree.root or REPO_ROOT).resolve()
    wrong = {
        name: file for name, file in roots.items() if not Path(file).resolve().is_relative_to(home)
    }
    if wrong:
        raise RevisionError(
            f"workers started from {home} would import {wrong}, not their own packages: "
            "the figures would not be that tree's; check PYTHONPATH and the editable install"
        )
    return roots
