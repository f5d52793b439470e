"""The layering, read from the source with ``ast`` (every import statement, also those inside functions):

* the vision half (``natural_images``) stands on the engine and the floor alone: it imports only
  ``copd_ifm`` (its version), the floor (``copd_ifm.config``, ``errors``, ``files``, ``stats``), the engine
  (``copd_ifm.contrastive.*``) and the study framework (:data:`FRAMEWORK`, not the CT study kinds or
  their ``ct_runs``); ``natural_images.cli`` also imports the CLI's argument plumbing
  ``copd_ifm.cli.args``, the one override path, since the vision half owns its commands;
* the floor, the engine and the CT half (``ct``, ``cohort``, ``context``, ``evaluation``) import nothing of
  ``natural_images``; nor does ``copd_ifm.studies``;
* the study framework imports only the floor and itself;
* nothing outside ``copd_ifm.cli`` imports the CLI, but ``python -m copd_ifm`` (``copd_ifm.__main__``) and
  ``natural_images.cli`` (its ``args``);
* no import circle among the modules' module-level imports (``if TYPE_CHECKING:`` blocks aside).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("copd_ifm", "natural_images")
FLOOR = ("copd_ifm.config", "copd_ifm.errors", "copd_ifm.files", "copd_ifm.stats")
ENGINE = "copd_ifm.contrastive"
CT_HALF = ("copd_ifm.ct", "copd_ifm.cohort", "copd_ifm.context", "copd_ifm.evaluation")
#: The domain-free study framework both halves build their studies on.
FRAMEWORK = ("copd_ifm.studies", "copd_ifm.studies.config", "copd_ifm.studies.grid", "copd_ifm.studies.folder",
             "copd_ifm.studies.runner", "copd_ifm.studies.results")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of the two packages by dotted name (``copd_ifm/configs`` holds data, no code)."""
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, modules: dict[str, Path], module_level: bool = False) -> list[tuple[str, int]]:
    """``(imported project module, line)`` of every import in ``path``; ``from pkg import sub`` names the
    submodule when ``sub`` is one. ``module_level``: only the statements that run on import (not inside
    functions or classes, not under ``if TYPE_CHECKING:``)."""
    found: list[tuple[str, int]] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in modules else base, node.lineno))
            elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            elif module_level and isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit([n for n in getattr(node, field, []) if isinstance(n, (ast.stmt, ast.ExceptHandler))])
                if isinstance(node, ast.ExceptHandler):
                    visit(node.body)

    tree = ast.parse(path.read_text(encoding="utf-8"))
    if module_level:
        visit(tree.body)
    else:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                visit([node])
    return [(target, line) for target, line in found if target.split(".")[0] in PACKAGES]


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def boundary_violations(root: Path = REPO) -> list[str]:
    """Every import that breaks the layering of the module doc, as ``module:line imports target``."""
    modules = project_modules(root)

    def vision_may_import(source: str, target: str) -> bool:
        if _within(target, "natural_images") or target == "copd_ifm" or target in FLOOR or _within(target, ENGINE):
            return True
        if target == "copd_ifm.cli.args":
            return source == "natural_images.cli"
        return target in FRAMEWORK

    bad = []
    for source, path in modules.items():
        for target, line in imports(source, path, modules):
            if _within(source, "natural_images"):
                ok = vision_may_import(source, target)
            elif source in FRAMEWORK and _within(target, "copd_ifm"):
                ok = target in FLOOR or target in FRAMEWORK
            elif _within(target, "natural_images"):
                ok = not any(_within(source, layer) for layer in (*FLOOR, ENGINE, *CT_HALF, "copd_ifm.studies"))
            elif _within(target, "copd_ifm.cli"):
                ok = _within(source, "copd_ifm.cli") or source == "copd_ifm.__main__"
            else:
                ok = True
            if not ok:
                bad.append(f"{source}:{line} imports {target}")
    return bad


def import_cycles(root: Path = REPO) -> list[list[str]]:
    """The strongly connected components (more than one module, or a module importing itself) of the
    module-level import graph (Tarjan)."""
    modules = project_modules(root)
    graph = {name: sorted({t for t, _ in imports(name, path, modules, module_level=True) if t in modules} - {name})
             for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            connect(name)
    return cycles


def test_the_vision_half_stands_on_the_engine_and_the_floor_and_nothing_imports_the_cli():
    assert boundary_violations() == []


def test_no_module_level_import_cycle():
    assert import_cycles() == []


def _copy(tmp_path: Path) -> Path:
    """The two packages' sources in ``tmp_path`` (code only), to break a rule in."""
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            target = tmp_path / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("module, line, rule", [
    ("natural_images/visualize.py", "from copd_ifm.evaluation.neighbours import ct_ifm_neighbours",
     "natural_images.visualize:{n} imports copd_ifm.evaluation.neighbours"),
    ("natural_images/train.py", "from copd_ifm.studies.shortcut import plan",
     "natural_images.train:{n} imports copd_ifm.studies.shortcut.plan"),
    ("natural_images/linear.py", "from copd_ifm.cli import args",
     "natural_images.linear:{n} imports copd_ifm.cli.args"),
    ("copd_ifm/evaluation/cv.py", "from natural_images import datasets",
     "copd_ifm.evaluation.cv:{n} imports natural_images.datasets"),
    ("copd_ifm/contrastive/loop.py", "import natural_images.train",
     "copd_ifm.contrastive.loop:{n} imports natural_images.train"),
    ("copd_ifm/context/train.py", "from copd_ifm.cli.args import overrides",
     "copd_ifm.context.train:{n} imports copd_ifm.cli.args"),
    ("natural_images/studies/recipes.py", "from copd_ifm.studies.ct_runs import Target",
     "natural_images.studies.recipes:{n} imports copd_ifm.studies.ct_runs"),
    ("copd_ifm/studies/folder.py", "from copd_ifm.context.train import pretrain",
     "copd_ifm.studies.folder:{n} imports copd_ifm.context.train"),
    ("copd_ifm/studies/shortcut/report.py", "from natural_images import study_plots",
     "copd_ifm.studies.shortcut.report:{n} imports natural_images.study_plots"),
])
def test_a_broken_boundary_is_reported(module, line, rule, tmp_path):
    root = _copy(tmp_path)
    path = root / module
    text = path.read_text(encoding="utf-8")
    path.write_text(text + f"\n\ndef _late() -> None:\n    {line}\n", encoding="utf-8")
    n = len(text.splitlines()) + 4
    assert boundary_violations(root) == [rule.format(n=n)]


def test_a_module_level_circle_is_reported_but_not_a_type_checking_one(tmp_path):
    root = _copy(tmp_path)
    path = root / "natural_images" / "config.py"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                           "    from natural_images.datasets import DatasetSpec\n", encoding="utf-8")
    assert import_cycles(root) == []
    path.write_text(text + "\nfrom natural_images.datasets import DatasetSpec\n", encoding="utf-8")
    assert import_cycles(root) == [["natural_images.config", "natural_images.datasets"]]


def test_the_vision_half_may_use_the_study_framework_but_not_a_study_kind(tmp_path):
    root = _copy(tmp_path)
    (root / "copd_ifm" / "studies" / "runner.py").write_text('"""A domain-free study module."""\n', encoding="utf-8")
    path = root / "natural_images" / "studies" / "run.py"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\nfrom copd_ifm.studies import runner\nimport copd_ifm.studies.runner\n"
                           "from copd_ifm.studies.shortcut import report\n", encoding="utf-8")
    n = len(text.splitlines()) + 4
    assert boundary_violations(root) == [f"natural_images.studies.run:{n} imports copd_ifm.studies.shortcut.report"]
