"""The package's shape: imports flow one way, and the code passes ruff."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "anomvae"

# Each module may import only modules of lower layers (imports inside
# functions included): readers and preprocessing at the bottom, the
# command line at the top.
LAYERS = [
    {"errors", "version", "allocator"},
    {"preprocessing", "history", "config", "elbo", "latent", "parquet", "plots"},
    {"tables", "images", "calibration", "schema", "files"},
    {"model"},
    {"training", "fitted"},
    {"detector", "results", "explain", "metrics", "prometheus"},
    {"scoring", "persistence"},
    {"dask", "reporting"},
    {"cli"},
    {"__main__"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts != ("__init__",):
            yield path, parts


def _imported(path, parts):
    """Top-level anomvae modules that the module at ``path`` imports, and
    whether it imports the package's ``__init__`` itself."""
    package = ["anomvae", *parts[:-1]]
    found, imports_init = set(), False
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            if target[:1] != ["anomvae"]:
                continue
            if len(target) == 1:  # from anomvae import x / from .. import x
                names = [alias.name for alias in node.names]
                imports_init |= not all((PACKAGE / n).with_suffix(".py").exists() or (PACKAGE / n).is_dir()
                                        for n in names)
                found.update(names)
            else:
                found.add(target[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "anomvae":
                    imports_init |= alias.name == "anomvae"
                    found.update(alias.name.split(".")[1:2])
    return found, imports_init


def test_every_module_has_a_layer():
    assert {parts[0] for _, parts in _modules()} == set(LAYER)


@pytest.mark.parametrize("path, parts", list(_modules()), ids=lambda v: "/".join(v) if isinstance(v, tuple) else "")
def test_imports_flow_downward(path, parts):
    imported, imports_init = _imported(path, parts)
    own = parts[0]
    assert not imports_init, f"{path.name} imports anomvae/__init__"
    upward = sorted(m for m in imported - {own} if LAYER[m] >= LAYER[own])
    assert not upward, f"anomvae.{own} imports {upward}, which are not below it"


def test_no_module_is_a_god_file():
    sizes = {path.relative_to(ROOT): len(path.read_text().splitlines()) for path, _ in _modules()}
    # About 400 lines at most: a longer module is doing more than one job.
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda item: -item[1])[:3]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[dev]'"
    result = subprocess.run([ruff, "check", "anomvae", "tests", "benchmarks", "examples"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
