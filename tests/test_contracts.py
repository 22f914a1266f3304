"""Contracts that used to be kept by hand, checked against what the code does.

- Each ``dvc.yaml`` stage's code ``deps`` cover every module its command can run: the modules the
  CLI subcommand's body imports or hands to ``_step``, and all they import in turn (read from the
  source, so a branch the micro run never takes, ``finetune.task: sft`` say, counts too). The
  stage's ``params`` are proven the same way at run time by ``LMFORGE_RECORD_PARAMS``
  (``tests/test_dvc_pipeline.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml
from test_imports import REPO, import_graph, imported_names, module_files, reachable, resolve

CLI = REPO / "src" / "lmforge" / "cli.py"
# Code every stage runs that decides nothing in its outputs, so no stage lists it:
NOT_OUTPUT_CODE = (
    "lmforge.cli",  # the command line: parses arguments and prints the result
    "lmforge.config",  # the params: each stage declares the keys it reads under `params`
    "lmforge.errors",  # how a failure is explained
    "lmforge.children",  # how child processes are ended
    "lmforge.vcs",  # the git commit, a lineage tag
    "lmforge.cores",  # how many threads: how fast, not what
    "lmforge.mkl_shim",  # which MKL kernels: how fast, not what
    "lmforge.machine",  # threads, allocator, kernels for every face: how fast, not what
    "lmforge.allocator",  # glibc's heap thresholds: how fast, not what
    # Where MLflow runs go and what they are tagged with (dvc.yaml's `tracking` params are left
    # out for the same reason; register, whose output names registry versions, lists it all):
    "lmforge.tracking",
    "lmforge.train.tracker",
    "lmforge.lineage",
    "lmforge.model_logging",
    "lmforge.data.track",
    "lmforge.registry.aliases",
    "lmforge.registry.compat",
    "lmforge.registry.connection",
)


def _command_functions() -> dict[str, list[ast.FunctionDef]]:
    """Each CLI subcommand's function, with the module-level helpers it calls by name."""
    tree = ast.parse(CLI.read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    commands = {}
    for func in functions.values():
        for deco in func.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "attr", None) == "command":
                commands[func.name.replace("_", "-")] = func
            elif isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "_command":
                named = [k.value.value for k in deco.keywords if k.arg == "name"]
                commands[named[0] if named else func.name.replace("_", "-")] = func
    out = {}
    for name, func in commands.items():
        called = {
            n.func.id
            for n in ast.walk(func)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions
        }
        out[name] = [func, *(functions[c] for c in sorted(called) if c != func.name)]
    return out


def stage_modules(command: str) -> set[str]:
    """The lmforge modules ``lmforge <command>`` can run."""
    modules = module_files()
    roots = set()
    for func in _command_functions()[command]:
        roots |= resolve(imported_names(func, "lmforge"), modules)
    # What only the excluded code imports is excluded with it: not followed past them.
    graph = {m: set() if m.startswith(NOT_OUTPUT_CODE) else t for m, t in import_graph().items()}
    return {m for m in reachable(graph, roots) if m.startswith("lmforge.")}


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_reading_a_command_finds_its_step_and_lazy_imports():
    assert "lmforge.train.pretrain" in stage_modules("pretrain")  # _step("...:pretrain")
    assert "lmforge.launch.trainjob" in stage_modules("pretrain")  # imported in the body
    assert "lmforge.train.skipped" in stage_modules("pretrain")  # via _pretrain_skipped


def test_every_dvc_stage_declares_the_code_it_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    files = module_files()
    missing = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()
        assert words[0] == "lmforge", f"stage {name}: not an lmforge command"
        deps = [d for d in stage.get("deps", []) if d.startswith("src/")]
        loose = sorted(
            files[m].relative_to(REPO).as_posix()
            for m in stage_modules(words[1])
            if not m.startswith(NOT_OUTPUT_CODE)
            and files[m].name != "__init__.py"
            and not covered(files[m], deps)
        )
        if loose:
            missing[name] = loose
    assert not missing, "dvc.yaml: stages run code their deps leave out (add it):\n" + "\n".join(
        f"  {stage}: {', '.join(paths)}" for stage, paths in missing.items()
    )


# Keys whose params.yaml value deliberately differs from the default a run gets without it, and
# why.
DELIBERATE: dict[str, str] = {
    "data.languages": "the shipped corpus is English: params.yaml keeps [en]; the code keeps "
    "every language (no identification), so a corpus in any language validates as it is",
}


def differences(ours: dict, theirs: dict, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for key in ours.keys() | theirs.keys():
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out |= differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out


def test_every_default_is_the_params_yaml_value():
    """The code, docs/params.md, --help and the compiled pipelines show the typed defaults (with
    the default model preset); params.yaml must not say otherwise unless the reason is above."""
    from lmforge.config import load_config

    found = differences(load_config(None).to_dict(), load_config(REPO / "params.yaml").to_dict())
    drift = {k: v for k, v in found.items() if k not in DELIBERATE}
    assert not drift, "defaults that params.yaml contradicts (code default, params.yaml):\n" + (
        "\n".join(f"  {k}: {a!r} vs {b!r}" for k, (a, b) in sorted(drift.items()))
    )


def test_packaged_data_exists():
    """Every package-data pattern of pyproject.toml matches a file (a wheel ships what it says)."""
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {**{"lmforge": "src/lmforge"}, **data.get("package-dir", {})}
    empty = [
        f"{package}: {pattern}"
        for package, patterns in data.get("package-data", {}).items()
        for pattern in patterns
        if not list((REPO / dirs.get(package, package)).glob(pattern))
    ]
    assert not empty, f"pyproject.toml packages files that do not exist: {empty}"


def test_the_cli_lists_every_pipeline_and_shows_the_preset_defaults():
    """The pipeline names come from the pipelines folder; --help defaults are what a run gets."""
    from typer.testing import CliRunner

    from lmforge.cli import app
    from lmforge.config import load_config

    folders = sorted(p.parent.name for p in (REPO / "pipelines").glob("*/pipeline.py"))
    runner = CliRunner()
    submit = runner.invoke(app, ["pipeline", "submit", "--help"], terminal_width=200).output
    assert f"Pipeline: {', '.join(folders)}." in submit
    pretrain = runner.invoke(app, ["pretrain", "--help"], terminal_width=200).output
    d_model = load_config(None).model.d_model  # the default preset's width
    assert f"model.d_model (int, default {d_model};" in " ".join(pretrain.split())
