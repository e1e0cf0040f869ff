"""One installed package with dependencies that run one way, and no name a user's file can shadow.

The layers (DESIGN.md): maas.handlers <- maas.core <- maas.export <- runtime <- maas.cli. The
test reads every import statement (functions' own imports too) with ast, so a lazy import
against the direction fails like a top-level one.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# The repository folders and the package each installs as (pyproject.toml's package-dir).
FOLDERS = {"maas": "maas", "export": "maas.export", "handlers": "maas.handlers", "loadtests": "maas.loadtests"}
LAYERS = ("maas.handlers", "maas.core", "maas.export", "runtime", "maas.cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    for rank, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return LAYERS.index("runtime")  # maas.server, maas.deploy, maas.loadtests, ...


def product_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from maas import deploy` names a module of maas itself
            if node.module == "maas":
                found += [(node.lineno, f"maas.{alias.name}") for alias in node.names]
    return found


def test_dependencies_run_one_way() -> None:
    wrong = []
    for path in product_files():
        here = module_name(path)
        for line, target in imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target.split(".")[0] in ("export", "handlers", "loadtests"):
                wrong.append(f"{where} imports {target}: the package is {FOLDERS[target.split('.')[0]]}")
            elif target.startswith("maas.") and target != "maas.__version__" and layer(target) > layer(here):
                wrong.append(f"{where}: {here} ({LAYERS[layer(here)]}) imports {target} ({LAYERS[layer(target)]})")
            elif here.startswith("maas.handlers") and target.startswith("maas"):
                wrong.append(f"{where}: a handler file imports {target}, which no .mar carries")
    assert not wrong, "\n".join(wrong)


def test_the_layer_rule_sees_a_wrong_import() -> None:
    """The check itself: an export module importing the CLI, or core importing export, is caught."""
    assert layer("maas.cli") > layer("maas.export.package") > layer("maas.core.spec") > layer("maas.handlers.dtypes")
    assert layer("maas.deploy") == layer("maas.loadtests.payloads") == LAYERS.index("runtime")
    assert module_name(ROOT / "export" / "zoo" / "__init__.py") == "maas.export.zoo"
    assert module_name(ROOT / "handlers" / "ort_base.py") == "maas.handlers.ort_base"


def test_a_users_own_export_py_is_theirs(tmp_path: Path) -> None:
    """A user directory holding export.py, on PYTHONPATH: `maas` starts and packages *their* function
    (it used to import maas's own top-level `export` package, or not start at all)."""
    (tmp_path / "export.py").write_text(
        "import torch\n\n\n"
        "def make_model() -> torch.nn.Module:\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env["PYTHONPATH"] = str(tmp_path)
    maas = [sys.executable, "-m", "maas.cli"]
    assert subprocess.run([*maas, "init"], cwd=tmp_path, env=env, capture_output=True).returncode == 0
    out = subprocess.run([*maas, "package", "--torch", "export:make_model", "--name", "mine",
                          "--input", "x:float32:[batch,4]"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "model_store" / "mine.mar").is_file()
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["export", "handlers", "loadtests"])
def test_no_generic_top_level_package_is_importable_from_maas(name: str) -> None:
    """Only `maas` is installed: outside the checkout, `import export` finds nothing of maas's."""
    out = subprocess.run([sys.executable, "-c", f"import importlib.util as u; s = u.find_spec({name!r}); "
                          "print(s.origin if s else None)"], cwd="/", capture_output=True, text=True)
    assert "maas" not in out.stdout and str(ROOT) not in out.stdout, out.stdout


def test_every_package_folder_is_installed() -> None:
    """pyproject.toml lists packages by hand (the folders map into maas): a new subpackage missing
    there would work in this checkout (editable) and be absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(init) for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}
    assert folders <= listed, f"add to [tool.setuptools] packages: {sorted(folders - listed)}"


def test_no_function_is_over_60_lines() -> None:
    """Short functions with one job: a longer one is a sign that a step wants its own name."""
    long = []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "\n".join(long)
