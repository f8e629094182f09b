"""The README's main job, timed step by step on a fresh clone: wall and CPU seconds. Prints a table.

Run: ``zoo bench main_job [--install] [--epochs N]``

Reads the command of README.md's "Run the main job" block (steps joined by ``&&``), clones the
repository's committed state into a temporary directory, and runs the steps there one by one,
recording each one's wall time and its CPU time (user + system of the step and its children). By
default the steps that create the virtual environment and install the package are left out and
``.venv/bin/zoo`` is this interpreter running the clone's code (no package registry needed);
``--install`` runs every step verbatim, the install included. The machine's load average is printed
beside: on a shared machine, CPU seconds are the steadier figure. ``--epochs N`` shortens the
training step (``zoo train ... --epochs N``; the figures are then not the README's). A benchmark, not
a test.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ".venv/bin/zoo"


def main_job_steps(readme: Path) -> list[str]:
    """The shell commands of the README's main job, in order."""
    match = re.search(r"\*\*Run the main job\*\*.*?```bash\n(.*?)\n```", readme.read_text(), re.DOTALL)
    if match is None:
        raise SystemExit(f"{readme}: no 'Run the main job' bash block")
    return [step.strip() for step in match.group(1).split("&&")]


def is_install(step: str) -> bool:
    return step.startswith("python3 -m venv") or re.search(r"\bpip install\b", step) is not None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_epochs(step: str, epochs: int | None) -> str:
    """``step`` with ``--epochs epochs`` added when it is the ``zoo train`` step and epochs is given."""
    if epochs is None or not re.search(rf"{re.escape(ZOO)} train\b", step):
        return step
    return f"{step} --epochs {epochs}"


def run_step(step: str, clone: Path, install: bool) -> tuple[float, float]:
    """Run ``step`` in ``clone``; its (wall, CPU) seconds. Exits when the step fails."""
    if install:
        command, environment = ["bash", "-c", step], dict(os.environ)
    else:
        words = shlex.split(step)
        assignments = {}  # the step's leading NAME=value words set its environment, as in a shell
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            assignments[name] = value
        if not words or words[0] != ZOO:
            raise SystemExit(f"cannot run {step!r} without --install (only {ZOO} commands are)")
        command = [sys.executable, "-m", "zoo", *words[1:]]
        environment = {**os.environ, **assignments, "PYTHONPATH": str(clone)}
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, cwd=clone, env=environment, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if result.returncode != 0:
        raise SystemExit(f"{step!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="also time the venv and pip install steps")
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the recipe's")
    args = parser.parse_args()
    steps = [with_epochs(step, args.epochs) for step in main_job_steps(ROOT / "README.md")]
    with tempfile.TemporaryDirectory(prefix="zoo-main-job-") as workdir:
        clone = Path(workdir) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        commit = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True
        )
        print(
            f"fresh clone of {commit.stdout.decode().strip()}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f} at the start"
        )
        print(f"{'wall s':>8}{'CPU s':>8}  step")
        total_wall = total_cpu = 0.0
        for step in steps:
            if is_install(step) and not args.install:
                print(f"{'skipped':>16}  {step}")
                continue
            wall, cpu = run_step(step, clone, args.install)
            total_wall, total_cpu = total_wall + wall, total_cpu + cpu
            print(f"{wall:8.1f}{cpu:8.1f}  {step}", flush=True)
        print(f"{total_wall:8.1f}{total_cpu:8.1f}  total")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
