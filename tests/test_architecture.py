"""The rules of the house, executable: the import graph has no circle and points down, no module reaches
for another's private names, the tests' oracle stays out of production, and the package imports
without its compiled library."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import lavise_fast

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lavise_fast"


def _modules() -> list[str]:
    """Every module and subpackage of lavise_fast (from the source files, not the compiled library)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _graph() -> dict[str, set[str]]:
    """module -> the modules of lavise_fast it imports (anywhere in it, also inside functions)."""
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the dev extra)")
    graph = grimp.build_graph("lavise_fast", include_external_packages=False)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


def test_the_import_graph_has_no_circle_and_no_import_of_a_package_from_inside_it():
    edges = _graph()
    # A package's __init__ hands its own modules' names on: those arrows point down by construction.
    for module, imported in edges.items():
        imported -= {m for m in imported if m.startswith(module + ".")}
        up = [m for m in imported if module.startswith(m + ".")]
        assert not up, f"{module} imports the package {up} that contains it (an arrow pointing up)"
    # Tarjan-free check: repeatedly peel off modules that import nothing left; a circle never peels.
    left = {m: set(i) & set(edges) for m, i in edges.items()}
    while True:
        leaves = [m for m, i in left.items() if not i]
        if not leaves:
            break
        for m in leaves:
            del left[m]
        for i in left.values():
            i.difference_update(leaves)
    assert not left, f"these modules import each other, directly or through others: {sorted(left)}"


def test_every_module_has_a_layer_and_the_contracts_hold():
    contracts = _config()["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace(":", "|").split("|")}
    top = {m for m in _modules() if m.count(".") == 1 and m != "lavise_fast._reference"}
    assert top - named == set(), f"modules without a layer in pyproject.toml: {sorted(top - named)}"
    forbidden = next(c for c in contracts if c["type"] == "forbidden")
    assert set(forbidden["source_modules"]) == top, "every production module must be barred from _reference"
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports (import-linter, in the dev extra) is not installed")
    run = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _private_uses(path: Path, own_package: str) -> list[str]:
    """Imports of another module's ``_name`` in one file, and ``module._name`` on an imported lavise_fast module.

    A private module of a package (``lavise_fast.data._common``) is open to its own package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found, modules = [], set()

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    def foreign_private_module(dotted: str) -> bool:
        parts = dotted.split(".")
        for n, part in enumerate(parts):
            if private(part) and not own_package.startswith(".".join(parts[:n])):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lavise_fast"):
            if foreign_private_module(node.module):
                found.append(f"{path.name}:{node.lineno} from {node.module}")
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{path.name}:{node.lineno} imports {node.module}.{alias.name}")
                else:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lavise_fast"):
                    if foreign_private_module(alias.name):
                        found.append(f"{path.name}:{node.lineno} import {alias.name}")
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_for_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).parent.parts)
        found += _private_uses(path, package)
    # The tests may read the oracle (lavise_fast._reference); nothing else private.
    for path in sorted((ROOT / "tests").glob("*.py")):
        found += [use for use in _private_uses(path, "lavise_fast._reference.") if "_reference" not in use]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_private_name_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from lavise_fast.pooling import _item_runs\nfrom lavise_fast import semantics\n"
                   "semantics._CACHE_FORMAT\nfrom lavise_fast.data._common import box_mask\n")
    assert len(_private_uses(bad, "lavise_fast")) == 3
    assert len(_private_uses(bad, "lavise_fast.data")) == 2


def test_no_function_shadows_a_module():
    for info in pkgutil.iter_modules(lavise_fast.__path__):
        if hasattr(lavise_fast, info.name):
            value = getattr(lavise_fast, info.name)
            assert value is importlib.import_module(f"lavise_fast.{info.name}"), (
                f"lavise_fast.{info.name} is a {type(value).__name__}, not the module of that name")


def test_the_package_imports_without_its_compiled_library(tmp_path):
    copy = tmp_path / "lavise_fast"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    code = (
        # An editable install's finder would find the checkout's _C for the copy: drop it.
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "import lavise_fast.data, lavise_fast.semantics, lavise_fast.vocabularies\n"
        "import lavise_fast, torch\n"
        f"assert lavise_fast.__file__.startswith({str(tmp_path)!r}), (lavise_fast.__file__, {str(tmp_path)!r})\n"
        "assert not lavise_fast.ops.has_cuda_kernels()\n"
        "try:\n"
        "    lavise_fast.ops.masked_pool(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool),"
        " torch.zeros(1, dtype=torch.long))\n"
        "except ImportError as error:\n"
        "    print('ERROR', error)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR") and "masked_pool" in line and "pip install --no-build-isolation ." in line, line


def _undocumented_parameters(path: Path) -> list[str]:
    """``file:line function(parameter)`` for every parameter of a public function or method in ``path``
    that its docstring's ``Args:`` section has no entry for (``name:``, ``*name:``; ``__init__`` may
    document its parameters in the class docstring)."""
    import re

    tree = ast.parse(path.read_text())
    missing = []

    def entries(doc: str | None) -> set[str]:
        found: set[str] = set()
        if not doc or "Args:" not in doc:
            return found
        for line in doc.split("Args:", 1)[1].splitlines()[1:]:
            if line.strip() and not line.startswith(" "):
                break
            match = re.match(r"^\s+([\w*][\w*, ]*):", line)
            if match:
                found |= {name.strip().lstrip("*") for name in match.group(1).split(",")}
        return found

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_") and child.name != "__init__":
                    continue
                if any(isinstance(d, ast.Name) and d.id in ("property", "overload") for d in child.decorator_list):
                    continue
                a = child.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                documented = entries(ast.get_docstring(child))
                if child.name == "__init__":
                    documented |= entries(ast.get_docstring(node))
                missing.extend(f"{path.name}:{child.lineno} {prefix}{child.name}({name})"
                               for name in names if name not in documented)

    visit(tree, "")
    return missing


def test_every_public_function_documents_every_parameter(tmp_path):
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if not p.name.startswith("_") or p.name == "__init__.py"]
    missing = [line for path in files for line in _undocumented_parameters(path)]
    assert not missing, "parameters without an Args entry:\n" + "\n".join(missing)
    # The check can fail: a public function with an undocumented parameter.
    (tmp_path / "m.py").write_text('def f(a, b):\n    """Job.\n\n    Args:\n        a: one.\n    """\n')
    assert _undocumented_parameters(tmp_path / "m.py") == ["m.py:1 f(b)"]
