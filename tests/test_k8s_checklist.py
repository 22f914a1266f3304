"""README "Deploying on Kubernetes": its checklist is what ``k8s/`` and lmforge's renders use,
both ways, and its commands run as far as a machine without a cluster allows.

The checklist's tables are read from the README itself; what is used comes from every object
lmforge ships or renders (``k8s_policy.sources``) and the compiled pipelines' secrets. The
command block runs under bash with ``kubectl``, ``lmforge``, ``make`` and ``docker`` replaced by
a recorder: ``kubectl create`` runs for real with ``--dry-run=client`` (so the secrets it would
make are compared with the table), each ``-k`` folder is built with ``kubectl kustomize``, each
``-f`` file must exist, and each ``lmforge`` command line is parsed by the CLI itself.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from k8s_policy.sources import everything
from k8s_schema import KUBECTL, REPO

from lmforge.config import load_config

SECTION_START, NEXT_SECTION = "## Deploying on Kubernetes\n", "\n## "
CORE_GROUP = "core"  # how the table writes the API group ""


def section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION_START)
    return text[start : text.index(NEXT_SECTION, start + 1)]


def table(first_header: str) -> list[dict[str, str]]:
    """The rows of the section's Markdown table whose first column is ``first_header``."""
    lines = section().splitlines()
    for i, line in enumerate(lines):
        cells = _cells(line)
        if cells and cells[0] == first_header:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(cells, _cells(row), strict=True)))
            return rows
    raise AssertionError(f"README {SECTION_START.strip()}: no table headed {first_header!r}")


def _cells(line: str) -> list[str]:
    line = line.strip()
    return [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def commands() -> str:
    """The bash block under "In this order"."""
    text = section()
    start = text.index("```bash", text.index("### In this order"))
    return text[start + len("```bash") : text.index("```", start + 3)]


# --------------------------------------------------------------------------------------------
# what the manifests and renders use
# --------------------------------------------------------------------------------------------


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def objects() -> list[dict[str, Any]]:
    return [obj for objs in everything().values() for obj in objs]


def secrets_used() -> dict[tuple[str, str], set[str]]:
    """(secret, namespace) -> the keys read by name (envFrom and mounts of all keys add none)."""
    cfg = load_config(REPO / "params.yaml")
    used: dict[tuple[str, str], set[str]] = {}
    for obj in objects():
        ns = obj.get("metadata", {}).get("namespace") or cfg.launch.namespace
        for node in _walk(obj):
            ref = node.get("secretKeyRef") or {}
            if ref.get("name"):
                used.setdefault((ref["name"], ns), set()).add(ref["key"])
            if (node.get("secretRef") or {}).get("name"):
                used.setdefault((node["secretRef"]["name"], ns), set())
            mount = node.get("secret")
            if isinstance(mount, dict) and mount.get("secretName"):
                keys = {item["key"] for item in mount.get("items") or []}
                used.setdefault((mount["secretName"], ns), set()).update(keys)
        if obj.get("kind") == "ServiceAccount":
            for listed in obj.get("secrets") or []:
                used.setdefault((listed["name"], ns), set())
        if obj.get("kind") == "Role":
            for rule in obj.get("rules") or []:
                if "secrets" in rule.get("resources", []):
                    for name in rule.get("resourceNames") or []:
                        used.setdefault((name, ns), set())
    for path in sorted((REPO / "pipelines").glob("*/pipeline.yaml")):
        platform = list(yaml.safe_load_all(path.read_text()))[1:]
        for node in _walk(platform):
            for env in node.get("secretAsEnv") or []:
                keys = {k["secretKey"] for k in env["keyToEnv"]}
                used.setdefault((env["secretName"], cfg.kubeflow.namespace), set()).update(keys)
    return used


def namespaces_used() -> set[str]:
    used = set()
    for obj in objects():
        meta = obj.get("metadata", {})
        used.update([meta["namespace"]] if meta.get("namespace") else [])
        if obj.get("kind") == "Namespace":
            used.add(meta["name"])
        for subject in obj.get("subjects") or []:
            used.update([subject["namespace"]] if subject.get("namespace") else [])
        for node in _walk(obj):
            selector = node.get("namespaceSelector") or {}
            name = (selector.get("matchLabels") or {}).get("kubernetes.io/metadata.name")
            used.update([name] if name else [])
    return used


def groups_used() -> set[str]:
    used = set()
    for obj in objects():
        version = obj.get("apiVersion", "")
        used.add(version.split("/")[0] if "/" in version else CORE_GROUP)
        for rule in obj.get("rules") or []:
            used.update(g or CORE_GROUP for g in rule.get("apiGroups") or [])
    return used


def storage_classes_used() -> set[str]:
    return {
        node["storageClassName"]
        for obj in objects()
        for node in _walk(obj)
        if isinstance(node.get("storageClassName"), str)
    }


# --------------------------------------------------------------------------------------------
# the checklist against them
# --------------------------------------------------------------------------------------------


def listed_secrets() -> dict[tuple[str, str], set[str]]:
    return {
        (ticked(row["secret"])[0], ns): set(ticked(row["keys"]))
        for row in table("secret")
        for ns in ticked(row["namespace"])
    }


def test_the_secrets_listed_are_those_used_with_the_keys_read():
    listed, used = listed_secrets(), secrets_used()
    assert set(listed) == set(used), "README secrets table vs what k8s/ and the renders use"
    for secret, keys in used.items():
        assert keys <= listed[secret], f"{secret}: keys read but not listed"
    cfg = load_config(REPO / "params.yaml")
    for ns in (cfg.launch.namespace, cfg.kubeflow.namespace):
        assert listed[(cfg.kubeflow.mlflow_secret, ns)] == set(cfg.kubeflow.mlflow_secret_keys)


def test_the_namespaces_listed_are_those_named():
    listed = {ticked(row["namespace"])[0] for row in table("namespace")}
    assert listed == namespaces_used()


def test_every_api_group_used_has_its_component_and_every_one_listed_is_used():
    listed = {g for row in table("component") for g in ticked(row["API groups it serves"])}
    assert listed == groups_used()


def test_the_storage_classes_listed_are_those_used():
    listed = {ticked(row["storage class"])[0] for row in table("storage class")}
    assert listed == storage_classes_used()


def test_the_operator_versions_are_those_of_the_crds_the_tests_use():
    version = {row["component"]: row["version"] for row in table("component")}
    crds = " ".join((REPO / "k8s" / "crds" / "README.md").read_text().split())
    for component, tag in [
        ("Kubeflow Trainer", "v2.3.0"),
        ("Kubeflow Training Operator", "v1.9.0"),
        ("KServe", "v0.20.0"),
    ]:
        assert tag.rsplit(".", 1)[0] in version[component] and f"tag `{tag}`" in crds, component
    text = " ".join(section().split())
    assert "trainer.git/manifests/overlays/manager?ref=v2.3.0" in text
    assert "training-operator.git/manifests/overlays/standalone?ref=v1.9.0" in text


# --------------------------------------------------------------------------------------------
# the commands, in order
# --------------------------------------------------------------------------------------------

RECORDER = """#!{python}
import json, os, subprocess, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
entry = {{"tool": name, "args": args, "cwd": os.getcwd()}}
if name == "kubectl" and "create" in args:
    offline = {{**os.environ, "KUBECONFIG": "/nonexistent"}}
    done = subprocess.run(["{kubectl}", *args, "--dry-run=client", "-o", "json"],
                          capture_output=True, text=True, env=offline)
    entry["rc"], entry["out"], entry["err"] = done.returncode, done.stdout, done.stderr
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps(entry) + "\\n")
sys.exit(entry.get("rc", 0))
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> list[dict[str, Any]]:
    """The command block run under bash -eu with the tools recorded."""
    tmp = tmp_path_factory.mktemp("checklist")
    bin_dir, work = tmp / "bin", tmp / "work"
    bin_dir.mkdir()
    work.mkdir()
    (work / "k8s").symlink_to(REPO / "k8s")
    (work / "basic_auth.ini").write_text("[mlflow]\nadmin_username = admin\n")
    for tool in ("kubectl", "lmforge", "make", "docker"):
        shim = bin_dir / tool
        shim.write_text(RECORDER.format(python=sys.executable, kubectl=KUBECTL))
        shim.chmod(0o755)
    block = commands()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(tmp / "record.jsonl")}
    env |= {var: "x" for var in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", block)}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (tmp / "record.jsonl").read_text().splitlines()]


def test_the_commands_create_the_secrets_listed_with_their_keys(ran):
    created: dict[tuple[str, str], set[str]] = {}
    for call in ran:
        if call["tool"] == "kubectl" and "create" in call["args"]:
            assert call["rc"] == 0, call["err"]
            obj = json.loads(call["out"])
            if obj["kind"] == "Secret":
                key = (obj["metadata"]["name"], obj["metadata"]["namespace"])
                created[key] = set(obj.get("data") or {})
    wanted = {k: v for k, v in listed_secrets().items() if v}  # the rest: made by an operator
    assert created == wanted
    annotated = [c["args"] for c in ran if c["tool"] == "kubectl" and "annotate" in c["args"]]
    for args in annotated:
        assert args[args.index("secret") + 1] in {name for name, _ in created}


def test_every_kustomization_and_file_the_commands_apply_exists_and_builds(ran):
    applied = [
        c for c in ran if c["tool"] == "kubectl" and c["args"][:1] in (["apply"], ["create"])
    ]
    for call in applied:
        for flag, value in itertools.pairwise(call["args"]):
            path = Path(call["cwd"], value).resolve()
            if flag == "-k":
                subprocess.run(
                    [str(KUBECTL), "kustomize", str(path)], check=True, capture_output=True
                )
            if flag == "-f":
                assert path.is_file(), value
    assert any("-k" in c["args"] for c in applied)


def test_every_path_under_k8s_the_section_names_exists_and_every_folder_is_named():
    named = set(re.findall(r"\b(k8s/[\w./*-]*[\w*])", section()))
    assert named
    for path in sorted(named):
        assert list(REPO.glob(path)), f"README names {path}, which is not in the repository"
    folders = {p.name for p in (REPO / "k8s").iterdir() if p.is_dir()}
    assert folders <= {path.split("/")[1] for path in named}, "a k8s/ folder the README omits"


def test_every_lmforge_command_parses_and_every_make_target_exists(ran):
    from lmforge.cli import app

    cli = typer.main.get_command(app)
    lines = [c["args"] for c in ran if c["tool"] == "lmforge"]
    assert len(lines) >= 3
    for block in re.findall(r"```bash\n(.*?)```", section(), re.S):  # the section's other blocks
        lines += [
            shlex.split(ln, comments=True)[1:]
            for ln in block.splitlines()
            if ln.startswith("lmforge ")
        ]
    for args in lines:
        group, rest = cli, list(args)
        while hasattr(group, "commands"):  # a group (typer ships its own click): its command
            group = group.commands.get(rest.pop(0))
            assert group is not None, args
        group.make_context("lmforge", rest)  # unknown options, bad values: a UsageError
    makefile = (REPO / "Makefile").read_text()
    for call in (c for c in ran if c["tool"] == "make"):
        target = next(a for a in call["args"] if "=" not in a)
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert shutil.which("bash")
