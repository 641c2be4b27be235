"""`pip install .` gives a working install: pyproject.toml declares requirements.txt's packages
(run-time ones as dependencies, the test runner and linter as the `dev` extra), the four console
scripts resolve to callables that run their command's module as `python -m` does, and the files
the installed code reads are package data. (No virtual environment is made here; docs/development.md
says how the install itself was checked.)"""

import fnmatch
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jem_tf import cli

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Console script -> the module its `python -m` form runs.
COMMANDS = {
    "jem-train": "jem_tf.train",
    "jem-evaluate": "jem_tf.evaluate",
    "jem-export": "export.savedmodel",
    "jem-import-reference": "trainers.from_reference",
}


def requirement_lines(path):
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_requirements_txt_is_the_dependencies_and_the_dev_extra():
    project = PYPROJECT["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert sorted(declared) == sorted(requirement_lines(REPO / "requirements.txt")), (
        "requirements.txt and pyproject.toml ([project] dependencies + the dev extra) must list the same pins")
    assert not {r.split(">")[0].split("=")[0] for r in project["dependencies"]} & {"pytest", "ruff"}


def test_console_scripts_are_declared_for_the_four_commands():
    scripts = PYPROJECT["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in scripts.items()} == COMMANDS


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_each_console_script_resolves_to_a_callable_that_runs_its_module(script, monkeypatch):
    module_name, attribute = PYPROJECT["project"]["scripts"][script].split(":")
    entry = getattr(importlib.import_module(module_name), attribute)
    assert callable(entry)
    ran = []
    monkeypatch.setattr(cli, "run_as_main", ran.append)
    entry()
    assert ran == [COMMANDS[script]]


def test_a_console_script_shows_its_commands_usage_and_flags(tmp_path):
    """What `jem-train --helpshort` runs, from outside the repository: the module runs as
    `__main__`, so absl shows its docstring and its own flags (not the script wrapper's)."""
    script = "import sys; from jem_tf.train import command; sys.argv = ['jem-train', '--helpshort']; command()"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr  # absl's --helpshort exits 1 (see jem_tf/train.py)
    assert "Command line: train JEM" in result.stdout
    assert "--preset" in result.stdout


def test_files_beside_the_code_are_package_data():
    """Every non-Python file in the installed packages' folders is matched by package-data, so an
    install carries the checker's C++ source (export/serving_check) and the serving kit."""
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    roots = [pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    missing = []
    for root in roots:
        for path in (REPO / root).rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(REPO / root).as_posix()
            if not any(fnmatch.fnmatch(relative, pattern) and pattern.count("/") == relative.count("/")
                       for pattern in package_data.get(root, [])):
                missing.append(f"{root}/{relative}")
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
