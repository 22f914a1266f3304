"""The container image, checked offline (no Docker engine here): what the Dockerfile builds,
who it runs as, what the build context may carry."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import import_module
from pathlib import Path

from packaging.specifiers import SpecifierSet

from lmforge.config import KubeflowConfig, LaunchConfig

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
PACKAGE_DIRS = ("components", "pipelines")  # packages of the distribution besides src/lmforge
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE)", re.I)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(kept))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip()
    ]


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = [[]]
    for ins in instructions(DOCKERFILE.read_text()):
        if ins[0] == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def args() -> dict[str, str]:
    found = {}
    for op, rest in instructions(DOCKERFILE.read_text()):
        if op == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            found[key.strip()] = value.strip()
    return found


def test_base_images_are_pinned():
    for stage in stages()[1:]:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args()[m.group(1)], image)
        if image in {s[0][1].split()[-1] for s in stages()[1:]}:
            continue  # FROM an earlier stage
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image), image
        assert not image.endswith(":latest")


def test_final_stage_runs_as_a_non_root_user():
    final = stages()[-1]
    users = [rest.split(":")[0] for op, rest in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert users[-1] == str(1000)  # numeric, so Kubernetes can verify runAsNonRoot
    created = " ".join(rest for op, rest in final if op == "RUN")
    assert "useradd --uid 1000" in created


def test_torch_is_the_cuda_build_of_the_pinned_version():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_spec = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    assert args()["TORCH_VERSION"] in SpecifierSet(torch_spec.removeprefix("torch"))
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args()["TORCH_INDEX"])
    run = " ".join(rest for op, rest in stages()[-1] if op == "RUN")
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in run
    assert "/wheels/*.whl" in run  # the package itself


def test_entrypoint_is_the_packages_console_script():
    final = stages()[-1]
    entry = next(rest for op, rest in final if op == "ENTRYPOINT")
    command = entry.strip('[]" ').split('"')[0]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts[command].partition(":")
    assert callable(getattr(import_module(module), attr))


def test_no_secret_is_baked_in():
    for op, rest in instructions(DOCKERFILE.read_text()):
        if op in ("ENV", "ARG", "LABEL"):
            assert not SECRETISH.search(rest), rest
        if op in ("COPY", "ADD"):
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            assert all(
                s in {"pyproject.toml", "README.md", "src", "./src", "/wheels", *PACKAGE_DIRS}
                for s in sources
            ), rest


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!").strip("/"))
        regex = regex.replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            verdict = not negate
    return verdict


def test_build_context_holds_only_the_package_sources():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sent = [f for f in files if not _ignored(f, patterns)]
    assert "pyproject.toml" in sent and "src/lmforge/cli.py" in sent
    assert all(
        f in ("pyproject.toml", "README.md")
        or f.startswith(("src/", *(f"{d}/" for d in PACKAGE_DIRS)))
        for f in sent
    )
    for leak in ("params.yaml", ".env", "src/x/.env", "mlflow.db", ".git/config", "id_rsa.pem"):
        assert _ignored(leak, patterns), leak


def test_one_image_name_everywhere():
    makefile = (REPO / "Makefile").read_text()
    image = re.search(r"^IMAGE\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert image == LaunchConfig.image == KubeflowConfig.image
    assert "docker build -f docker/Dockerfile" in makefile


def test_the_runtime_image_has_what_compile_and_multi_node_nccl_need_at_run_time():
    """Triton compiles its launcher with a C compiler when pretrain.compile runs on a GPU; NCCL
    reaches InfiniBand/RoCE only through rdma-core's verbs (else TCP sockets)."""
    runtime = stages()[-1]
    installed = " ".join(rest for op, rest in runtime if op == "RUN" and "apt-get install" in rest)
    for package in ("gcc", "libc6-dev", "rdma-core", "libibverbs1", "ibverbs-providers"):
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", installed), package
    assert "rm -rf /var/lib/apt/lists" in installed
    user_at = next(i for i, (op, _) in enumerate(runtime) if op == "USER")
    apt_at = next(i for i, (op, rest) in enumerate(runtime) if "apt-get install" in rest)
    assert apt_at < user_at  # installed as root, run as the image's user
