"""BUILD stays true to the code. It is generated (`python -m tools.gen_build`), so the first test is
that the committed file is the generator's output; the others check that output independently of the
generator: every module and test has a target, and every first-party import is provided by the target
itself or one of its direct deps. (Bazel 4 cannot run py_test offline, so this is checked here.)"""

import ast
from pathlib import Path

from tools import gen_build

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("jem_tf", "trainers", "export", "benchmarks", "tools")


def test_committed_build_is_the_generators_output():
    assert (REPO / "BUILD").read_text() == gen_build.render(), (
        "BUILD differs from the imports: run `python -m tools.gen_build` and commit BUILD "
        "(`python -m tools.gen_build --check` shows the difference)")


def test_check_mode_exits_1_on_a_stale_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen_build, "REPO", tmp_path)
    (tmp_path / "jem_tf").mkdir()
    (tmp_path / "jem_tf" / "__init__.py").write_text("")
    (tmp_path / "jem_tf" / "a.py").write_text("from jem_tf import b\n")
    (tmp_path / "jem_tf" / "b.py").write_text("import os\n")
    assert gen_build.main(["--check"]) == 1  # no BUILD yet
    assert gen_build.main([]) == 0
    assert gen_build.main(["--check"]) == 0
    assert 'deps = [":jem_tf_b"]' in (tmp_path / "BUILD").read_text()
    (tmp_path / "jem_tf" / "c.py").write_text("from . import a\n")
    assert gen_build.main(["--check"]) == 1
    assert '+    deps = [":jem_tf_a"],' in capsys.readouterr().out


def load_targets():
    targets = {}

    def rule(kind):
        def record(name, srcs=(), deps=(), **kwargs):
            targets[name] = dict(kind=kind, srcs=list(srcs), deps=[d.lstrip(":") for d in deps], **kwargs)

        return record

    namespace = {k: rule(k) for k in ("py_library", "py_test", "py_binary")}
    namespace["glob"] = lambda patterns, **kwargs: sorted(
        str(p.relative_to(REPO)) for pattern in patterns for p in REPO.glob(pattern))
    exec(compile((REPO / "BUILD").read_text(), "BUILD", "exec"), namespace)  # BUILD is Python-syntax Starlark
    return targets


def python_files():
    files = [p for top in FIRST_PARTY for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(str(p.relative_to(REPO)) for p in files)


def module_file(module):
    """jem_tf.sampling.sgld -> jem_tf/sampling/sgld.py (or the package's __init__.py)."""
    path = REPO / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return str(candidate.relative_to(REPO))
    return None


def first_party_imports(path):
    tree = ast.parse((REPO / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import module` needs the module; `from module import name` needs the module.
            names = [f"{node.module}.{alias.name}" if module_file(f"{node.module}.{alias.name}") else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FIRST_PARTY:
                found = module_file(name)
                if found:
                    yield name, found


def test_every_module_is_in_exactly_one_library_or_binary():
    owners = {}
    for name, target in load_targets().items():
        if target["kind"] != "py_test":
            for src in target["srcs"]:
                owners.setdefault(src, []).append(name)
    missing = [f for f in python_files() if f not in owners]
    duplicated = {f: o for f, o in owners.items() if len(o) > 1}
    assert not missing, f"modules without a BUILD target: {missing}"
    assert not duplicated, f"modules in several targets: {duplicated}"
    stale = [f for f in owners if not (REPO / f).exists()]
    assert not stale, f"BUILD lists files that do not exist: {stale}"


def test_every_test_file_has_a_py_test():
    tests = {src for t in load_targets().values() if t["kind"] == "py_test" for src in t["srcs"]}
    expected = {str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")}
    assert expected <= tests, f"tests without a py_test: {sorted(expected - tests)}"


def test_first_party_imports_are_declared_deps():
    targets = load_targets()
    problems = []
    for name, target in targets.items():
        provided = set(target["srcs"])
        for dep in target["deps"]:
            if dep in targets:
                provided.update(targets[dep]["srcs"])
            elif not dep.startswith("@"):
                problems.append(f"{name}: unknown dep {dep!r}")
        for src in target["srcs"]:
            for module, path in first_party_imports(src):
                # A package import may be satisfied by the package's __init__ or the module itself.
                if path not in provided:
                    problems.append(f"{name}: {src} imports {module} ({path}) without a dep providing it")
    assert not problems, "\n".join(sorted(set(problems)))
