"""The benchmark scripts of a source checkout (``bench/bench_NAME.py``), found and run by ``zoo bench``.

The scripts live next to the packages, not inside them (they compare against peers and plain
networks, and are no part of the library), so ``zoo bench`` works from a clone of the repository
(an editable install) and says so anywhere else.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["BENCH_DIR", "BenchmarkNotFoundError", "describe", "find_benchmarks", "run_benchmark"]

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
PREFIX = "bench_"


class BenchmarkNotFoundError(FileNotFoundError):
    """No bench/ directory, or no script of that name in it."""


def find_benchmarks(directory: Path = BENCH_DIR) -> dict[str, Path]:
    """``{name: script}`` for every ``bench_NAME.py`` of ``directory``, by name."""
    if not directory.is_dir():
        raise BenchmarkNotFoundError(
            f"no benchmark scripts: {directory} does not exist (zoo bench runs the scripts of a "
            "source checkout; clone the repository and install it with pip install -e .)"
        )
    scripts = sorted(directory.glob(f"{PREFIX}*.py"))
    return {script.stem.removeprefix(PREFIX): script for script in scripts}


def describe(script: Path) -> str:
    """The first paragraph of the script's docstring, on one line (read, not imported: the scripts
    import heavy peers)."""
    docstring = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return " ".join(docstring.split("\n\n")[0].split())


def run_benchmark(name: str, arguments: list[str], directory: Path = BENCH_DIR) -> int:
    """Run ``bench_NAME.py`` with ``arguments`` in this interpreter, from the repository root (so
    its packages import), output streamed; returns the script's exit code."""
    benchmarks = find_benchmarks(directory)
    if name not in benchmarks:
        raise BenchmarkNotFoundError(f"no benchmark {name!r}; known: {', '.join(benchmarks)}")
    root = directory.parent
    paths = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, str(benchmarks[name]), *arguments]
    return subprocess.run(command, cwd=root, env=environment, check=False).returncode
