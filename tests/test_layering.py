"""The package layering, checked on the source: the library `jem_tf/` imports neither `trainers/`
nor `export/`, and `export/` does not import `trainers/`. Only the command-line entry points
`jem_tf/train.py` and `jem_tf/evaluate.py` may cross (they wire the packages together).

Every import counts, at any depth (function-level imports included), relative ones resolved, and
`importlib.import_module("...")` / `__import__("...")` with a literal name as well.
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> the first-party packages it must not import
FORBIDDEN = {"jem_tf": ("trainers", "export"), "export": ("trainers",)}
ENTRY_POINTS = ("jem_tf/train.py", "jem_tf/evaluate.py")
SCANNED = ("jem_tf", "export", "trainers")


def _package_of(relative_path: str) -> list:
    """jem_tf/evaluation/suite.py -> ['jem_tf', 'evaluation']; a package's __init__.py is its own package."""
    return list(Path(relative_path).parent.parts)


def imported_modules(source: str, relative_path: str):
    """(line, absolute dotted name) for every import in `source`, at any nesting depth; `from m import a`
    gives 'm.a'."""
    package = _package_of(relative_path)
    for node in ast.walk(ast.parse(source, filename=relative_path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..pkg import y, resolved against this file's package
                base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                yield node.lineno, module if alias.name == "*" else f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def violations(source: str, relative_path: str) -> list:
    """'path:line imports module (package must not import forbidden)' for each import crossing the rules."""
    if relative_path in ENTRY_POINTS:
        return []
    top = Path(relative_path).parts[0]
    found = []
    for line, module in imported_modules(source, relative_path):
        target = module.split(".")[0]
        if target in FORBIDDEN.get(top, ()):
            found.append(f"{relative_path}:{line} imports {module} ({top}/ must not import {target}/)")
    return found


def python_files():
    return sorted(str(p.relative_to(REPO)) for top in SCANNED for p in (REPO / top).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_no_package_imports_across_the_layering():
    files = python_files()
    assert any(f.startswith("export/") for f in files) and any(f.startswith("jem_tf/") for f in files)
    found = [v for path in files for v in violations((REPO / path).read_text(), path)]
    assert not found, (
        "Imports that break the layering (jem_tf/ imports neither trainers/ nor export/; export/ does not import "
        "trainers/; only jem_tf/train.py and jem_tf/evaluate.py may cross). Move the shared code down into "
        "jem_tf/ or the caller up:\n  " + "\n  ".join(found))


def test_the_entry_points_are_exempt():
    # jem_tf/train.py crosses in function-level imports (the loop, and the export at the end of training):
    # the scanner sees them, and the exemption is what lets them pass.
    path = "jem_tf/train.py"
    source = (REPO / path).read_text()
    assert {"trainers", "export"} <= {m.split(".")[0] for _, m in imported_modules(source, path)}
    assert violations(source, path) == []
    assert violations(source, "jem_tf/not_an_entry_point.py")


SOURCE = """
import os
from jem_tf import energy


def restore():
    from trainers import loop  # noqa

    if True:
        import export.savedmodel
    return loop


class Lazy:
    def load(self):
        import importlib

        return importlib.import_module("trainers.jem"), __import__("export.client")
"""


@pytest.mark.parametrize("path,expected", [
    ("jem_tf/evaluation/anything.py", ["jem_tf/evaluation/anything.py:7 imports trainers.loop",
                                       "jem_tf/evaluation/anything.py:10 imports export.savedmodel",
                                       "jem_tf/evaluation/anything.py:18 imports trainers.jem",
                                       "jem_tf/evaluation/anything.py:18 imports export.client"]),
    ("export/anything.py", ["export/anything.py:7 imports trainers.loop",
                            "export/anything.py:18 imports trainers.jem"]),
    ("trainers/anything.py", []),
    ("jem_tf/train.py", []),
])
def test_every_kind_of_import_is_seen_at_any_depth(path, expected):
    found = violations(SOURCE, path)
    assert [v.split(" (")[0] for v in found] == expected


def test_relative_imports_resolve_inside_the_file_package():
    # A relative import cannot leave its top-level package, so it never crosses; it must still parse and resolve.
    source = "from . import energy\nfrom ..sampling import sgld\nfrom .common import x\n"
    assert [m for _, m in imported_modules(source, "jem_tf/evaluation/x.py")] == \
        ["jem_tf.evaluation.energy", "jem_tf.sampling.sgld", "jem_tf.evaluation.common.x"]
    assert violations(source, "jem_tf/evaluation/x.py") == []


# The parts that serve every objective: they ask the model (trainers/registry.py hooks) or read the
# run's files, and never branch on which objective it is.
OBJECTIVE_AGNOSTIC = ("trainers/loop.py", "trainers/run_plan.py", "trainers/checkpointing.py", "trainers/recovery.py",
                      "trainers/preemption.py",
                      "export", "jem_tf/evaluation", "jem_tf/workdir", "jem_tf/preflight.py", "jem_tf/data")
OBJECTIVE_BRANCH = re.compile(
    r"objective\s*(==|!=|\bin\b|\bnot in\b)"  # config.objective == "jem", objective in (...)
    r"|isinstance\([^)]*\b(JEM\w*|Classifier)\b"  # isinstance(model, JEM)
    r"|hasattr\([^)]*[\"']replay_buffer[\"']")  # duck-typed JEM checks


def objective_branches(source: str, relative_path: str) -> list:
    return [f"{relative_path}:{number}: {line.strip()}" for number, line in enumerate(source.splitlines(), 1)
            if OBJECTIVE_BRANCH.search(line) and not line.lstrip().startswith("#")]


def test_the_loop_export_and_evaluation_never_branch_on_the_objective():
    found = []
    for part in OBJECTIVE_AGNOSTIC:
        paths = [REPO / part] if part.endswith(".py") else sorted((REPO / part).rglob("*.py"))
        for path in paths:
            found += objective_branches(path.read_text(), str(path.relative_to(REPO)))
    assert not found, "objective-specific branches (use the objective's hooks):\n" + "\n".join(found)


def test_the_objective_branch_check_recognises_each_form():
    for line in ('if config.objective == "jem":', "if isinstance(model, JEM):", "elif isinstance(m, (JEMPP, X)):",
                 'if hasattr(model, "replay_buffer"):', "if config.objective in ('jem', 'jempp'):"):
        assert objective_branches(line, "x.py"), line
    assert not objective_branches("objective_name = 'jem'  # registry", "x.py")
