"""The distribution: one version, typed packages, and extras that match the commands.

Each install is checked in a fresh virtual environment holding the project's wheel and, for its
dependencies, only the distributions that ``lipschitz-zoo[EXTRA]`` requires (linked from this
environment, closed over their own requirements): a module imported by a command but missing from its
extra fails there, as it would for a user, without downloading anything.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import zoo
from zoo.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SHIPPED = next(name for name, entry in load_registry().items() if entry.checkpoint is not None)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out]
    subprocess.run([*command, ROOT], check=True)
    (built,) = out.glob("lipschitz_zoo-*.whl")
    return built


def required_distributions(requirements: list[str], extras: set[str]) -> set[str]:
    """Canonical names of the installed distributions that ``requirements`` (with ``extras`` active)
    need, closed over their own requirements; markers are evaluated for this interpreter."""
    needed: set[str] = set()
    pending = [(Requirement(text), extras) for text in requirements]
    while pending:
        requirement, active = pending.pop()
        if requirement.marker and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in (active or {""})
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name == "lipschitz-zoo":  # a self-reference such as lipschitz-zoo[train]
            pending += [(Requirement(text), set(requirement.extras)) for text in metadata_requirements()]
            continue
        if name in needed:
            continue
        needed.add(name)
        own = metadata.distribution(name).requires or []
        pending += [(Requirement(text), set(requirement.extras)) for text in own]
    return needed


def metadata_requirements() -> list[str]:
    """The project's requirements as pyproject.toml states them, extras as ``extra == X`` markers."""
    texts = list(PROJECT["dependencies"])
    for extra, requirements in PROJECT["optional-dependencies"].items():
        for text in requirements:
            marker = f'extra == "{extra}"'
            texts.append(f"{text} and {marker}" if ";" in text else f"{text}; {marker}")
    return texts


def link_distributions(names: set[str], into: Path) -> None:
    """Symlink every top-level file and folder of the named installed distributions into ``into``."""
    into.mkdir()
    for name in names:
        distribution = metadata.distribution(name)
        tops = {Path(str(file)).parts[0] for file in distribution.files or ()}
        for top in tops - {"..", "__pycache__"}:
            target = Path(str(distribution.locate_file(top)))
            if target.exists() and not (into / top).exists():
                (into / top).symlink_to(target)


def fresh_environment(tmp_path: Path, wheel: Path, extra: str) -> Path:
    """A new venv with the wheel installed and only the dependencies of ``lipschitz-zoo[extra]``."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    extras = {extra} if extra else set()
    texts = [text for text in metadata_requirements() if "extra ==" not in text or extra]
    link_distributions(required_distributions(texts, extras), tmp_path / "dependencies")
    Path(site, "dependencies.pth").write_text(f"{tmp_path / 'dependencies'}\n")
    install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel]
    subprocess.run(install, check=True)
    return python


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_version_has_one_source_and_the_packages_are_typed(wheel):
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (meta,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        text = archive.read(meta).decode()
    assert re.search(rf"^Version: {re.escape(zoo.__version__)}$", text, re.MULTILINE)
    assert {"zoo/py.typed", "training/py.typed", "export/py.typed", "zoo/models.yaml"} <= names


def test_the_installed_versions_satisfy_the_stated_lower_bounds():
    """The lower bounds are the versions tested here: this environment must satisfy every one."""
    for text in metadata_requirements():
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        extras = ["", *PROJECT["optional-dependencies"]]
        applies = not requirement.marker or any(requirement.marker.evaluate({"extra": e}) for e in extras)
        if name == "lipschitz-zoo" or not applies:  # a self-reference, or another platform's package
            continue
        installed = metadata.version(name)
        assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed}: {text}"


def test_the_core_loads_and_certifies_and_names_the_missing_extras(tmp_path, wheel):
    python = fresh_environment(tmp_path, wheel, "")
    script = f"import zoo; print(zoo.load({SHIPPED!r}).certificate.lipschitz_bound)"
    loaded = run(python, "-c", script, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert float(loaded.stdout) == pytest.approx(load_registry()[SHIPPED].certificate["lipschitz_bound"])
    isolated = run(python, "-c", "import sklearn", cwd=tmp_path)
    assert isolated.returncode != 0, "the core environment must not see the train extra's packages"
    certified = run(python, "-m", "zoo", "certify", SHIPPED, "--json", cwd=tmp_path)
    assert certified.returncode == 0, certified.stderr
    for command, extra in (("train", "train"), ("serve", "serve"), ("report", "report")):
        result = run(python, "-m", "zoo", command, SHIPPED, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert f"needs the '{extra}' extra" in result.stderr and "Traceback" not in result.stderr
    result = run(python, "-m", "zoo", "verify", str(tmp_path), cwd=tmp_path)  # a Triton repository
    assert result.returncode == 1 and "zoo verify needs the 'triton' extra" in result.stderr


@pytest.mark.parametrize(
    ("extra", "modules"),
    [
        ("train", ["training.trainer", "training.continual", "training.transfer"]),
        ("export", ["export.pipeline", "export.verify", "export.triton"]),
        ("serve", ["zoo.app.serve", "zoo.app.serve.server"]),
        ("report", ["zoo.app.report"]),
        ("triton", ["tritonclient.grpc.model_config_pb2"]),
    ],
)
def test_each_extra_brings_what_its_command_imports(tmp_path, wheel, extra, modules):
    python = fresh_environment(tmp_path, wheel, extra)
    script = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    result = run(python, "-c", script, *modules, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
