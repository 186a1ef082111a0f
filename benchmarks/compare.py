"""Figures of two versions side by side, in one run: ``python -m benchmarks.compare --against REV``.

Why: a change that must leave the cold start and the hit path as they were (new configuration, a new
module) is judged against the version before it, measured on the same machine at the same time, not
against figures written down on another day under another load. ``REV`` (a commit, tag or branch) is
checked out into a temporary git worktree; each round runs ``python -m benchmarks --only NAME ...`` once
in that tree and once in this one, alternating which goes first, so a noisy spell on shared cores falls on
both sides. Each tree measures with its own benchmark code and environment (what that version deploys);
both use this checkout's ``.venv`` and ``node_modules`` (DynamoDB Local). The medians of the rounds are
printed as a table on stdout: figure, ``REV``, this tree, and this tree's value over ``REV``'s.

Default figures: ``cold_start_ratio`` (with ``cold_start_api_ms``, ``cold_start_provider_ms``,
``cold_start_baseline_ms``), ``hit_vs_getitem_ratio`` and ``warm_hit_ms``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIGURES = ("cold_start_ratio", "hit_vs_getitem_ratio")
SHARED = (".venv", "node_modules")
"""What ``make`` installs, used by both trees."""


def figures(tree: Path, only: list[str], extra: list[str]) -> dict[str, float]:
    """One ``python -m benchmarks`` run in ``tree``: its ``name: value`` lines (``nan`` where unmeasured)."""
    command = [sys.executable, "-m", "benchmarks", *(arg for name in only for arg in ("--only", name)), *extra]
    print(f"[compare] {tree.name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": ""})
    sys.stderr.write(result.stderr[-2000:])
    values: dict[str, float] = {}
    for line in result.stdout.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            try:
                values[name.strip()] = float(value)
            except ValueError:
                continue
    return values


def worktree(rev: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="bench-against-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(target), rev], cwd=ROOT, check=True)
    for name in SHARED:
        if (ROOT / name).exists() and not (target / name).exists():
            (target / name).symlink_to(ROOT / name)
    return target


def remove(target: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(target)], cwd=ROOT, check=False)
    shutil.rmtree(target.parent, ignore_errors=True)


def table(rev: str, old: dict[str, list[float]], new: dict[str, list[float]]) -> list[str]:
    def median(values: list[float]) -> float:
        finite = [value for value in values if not math.isnan(value)]
        return statistics.median(finite) if finite else float("nan")

    rows = [("figure", rev[:12], "this tree", "this / " + rev[:12])]
    for name in sorted(set(old) | set(new)):
        before, after = median(old.get(name, [])), median(new.get(name, []))
        ratio = after / before if before and not math.isnan(before) and not math.isnan(after) else float("nan")
        rows.append((name, f"{before:.3f}", f"{after:.3f}", f"{ratio:.3f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, metavar="REV", help="the version to compare with")
    parser.add_argument("--only", action="append", metavar="NAME", help="a figure to compare (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side, alternating (default 3)")
    parser.add_argument("--cold-runs", type=int, default=None, help="passed on to each run")
    args = parser.parse_args(argv)
    extra = ["--cold-runs", str(args.cold_runs)] if args.cold_runs else []
    only = args.only or list(DEFAULT_FIGURES)
    other = worktree(args.against)
    old: dict[str, list[float]] = {}
    new: dict[str, list[float]] = {}
    try:
        for round_ in range(args.rounds):
            sides = [(other, old), (ROOT, new)]
            for tree, into in sides if round_ % 2 == 0 else reversed(sides):
                for name, value in figures(tree, only, extra).items():
                    into.setdefault(name, []).append(value)
    finally:
        remove(other)
    print("\n".join(table(args.against, old, new)))
    return 0 if old and new else 1


if __name__ == "__main__":
    sys.exit(main())
