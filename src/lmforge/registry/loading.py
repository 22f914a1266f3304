"""Registry artifacts are data, never code: the one check every load of a registered model uses.

Whoever can write an artifact into the registry must not be able to run code where the model is
loaded (evaluate's champion, ``lmforge generate``, ``lmforge serve``, ``lmforge deploy``, the KFP
steps that call them). Many parts of a registered MLflow model can run code on load:

- MLflow's ``python_function`` flavour imports its ``loader_module`` and puts its ``code`` folder
  on ``sys.path`` (what ``mlflow models serve`` loads); other flavours have loaders of their own;
- ``mlflow.transformers`` passes ``trust_remote_code=True`` for a class transformers lacks, and
  an ``auto_map`` in a config file points transformers at Python files beside it;
- pickles (``*.bin``/``*.pt`` torch weights, joblib, cloudpickle) run code when unpickled.

So a version is downloaded into a private folder and every file is checked before anything in it
is loaded: the MLmodel may have only the ``transformers`` flavour (and a ``python_function``
flavour whose loader is ``mlflow.transformers``, without code paths), naming transformers' own
classes; the files must be of the formats lmforge registers (JSON, safetensors weights, text,
YAML); config files may not name custom code. The model is then loaded from that same folder,
remote code disabled. What was refused is named, file by file, in one paragraph.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import RegistryError

MLMODEL = "MLmodel"
MODEL_SUBDIR = "model"  # MLflow's transformers flavour: the weights and config
TOKENIZER_SUBDIR = "components/tokenizer"
PYFUNC_LOADER = "mlflow.transformers"  # the only python_function loader allowed
TASKS = ("text-generation", "text-classification", "image-text-to-text")  # what lmforge registers
DTYPES = (None, "torch.float32", "torch.float16", "torch.bfloat16")

# The keys lmforge's registrations have (mlflow.transformers.log_model); any other key is a way
# MLflow could load something from elsewhere (the hub, a local base model, a PEFT folder, code).
TRANSFORMERS_KEYS = {
    "task", "instance_type", "pipeline_model_type", "model_binary", "components",
    "tokenizer_type", "source_model_name", "torch_dtype", "transformers_version", "framework",
    "code",
}  # fmt: skip
PYFUNC_KEYS = {"loader_module", "env", "python_version"}
# Formats that hold data only: what lmforge itself registers, and nothing parses them as code.
DATA_SUFFIXES = {".json", ".safetensors", ".txt", ".yaml", ".yml", ".md", ".jinja", ".model"}
DATA_NAMES = {MLMODEL, "LICENSE"}
CODE_SUFFIXES = {
    ".py": "Python source",
    ".pyc": "compiled Python",
    ".so": "a native library",
    ".pkl": "a pickle (runs code when loaded)",
    ".pickle": "a pickle (runs code when loaded)",
    ".bin": "torch weights in a pickle (runs code when loaded; lmforge saves safetensors)",
    ".pt": "torch weights in a pickle (runs code when loaded; lmforge saves safetensors)",
    ".pth": "torch weights in a pickle (runs code when loaded; lmforge saves safetensors)",
    ".ckpt": "a checkpoint pickle (runs code when loaded)",
    ".joblib": "a joblib pickle (runs code when loaded)",
    ".cloudpickle": "a cloudpickle (runs code when loaded)",
    ".dill": "a dill pickle (runs code when loaded)",
}
# Config keys that make transformers import Python from beside the config (or the hub).
CODE_KEYS = ("auto_map", "custom_pipelines", "trust_remote_code")
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip of pickles


@dataclass(frozen=True)
class CheckedModel:
    """A downloaded version that passed :func:`check_model_files`: load only from here."""

    what: str  # models:/NAME/VERSION, or the folder
    root: Path
    model_dir: Path
    tokenizer_dir: Path
    flavor: dict[str, Any]  # the MLmodel's transformers flavour (only keys lmforge knows)
    mlmodel: dict[str, Any]


def _is_transformers_class(name: Any) -> bool:
    import transformers

    return isinstance(name, str) and name.isidentifier() and hasattr(transformers, name)


def _files_problems(root: Path) -> list[str]:
    """Each file that is not plain data: by kind (a link, its suffix) and by content (a pickle)."""
    problems = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(f"{rel}: a symbolic link (could point outside the model)")
            continue
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in CODE_SUFFIXES:
            problems.append(f"{rel}: {CODE_SUFFIXES[suffix]}")
        elif suffix not in DATA_SUFFIXES and path.name not in DATA_NAMES:
            problems.append(f"{rel}: not a format lmforge registers (JSON, safetensors, text)")
        elif suffix != ".safetensors":  # safetensors' own parser never runs code
            with path.open("rb") as fh:
                head = fh.read(4)
            if head.startswith(PICKLE_MAGIC) or head == ZIP_MAGIC:
                problems.append(f"{rel}: holds a pickle (runs code when loaded)")
    return problems


def _inside(root: Path, rel: Any, where: str, problems: list[str]) -> Path:
    path = (root / str(rel)).resolve()
    if not isinstance(rel, str) or not path.is_relative_to(root.resolve()):
        problems.append(f"{where} = {rel!r}: outside the model's folder")
        return root / MODEL_SUBDIR
    return path


def _flavors_problems(mlmodel: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The transformers flavour; what else the MLmodel would make MLflow load goes to problems."""
    flavors = mlmodel.get("flavors") if isinstance(mlmodel.get("flavors"), dict) else {}
    for name in sorted(set(flavors) - {"transformers", "python_function"}):
        problems.append(f"MLmodel flavors.{name}: a flavour other than transformers")
    pyfunc = flavors.get("python_function")
    if pyfunc is not None:
        pyfunc = pyfunc if isinstance(pyfunc, dict) else {"": pyfunc}
        if pyfunc.get("loader_module") != PYFUNC_LOADER:
            problems.append(
                f"MLmodel flavors.python_function.loader_module = "
                f"{pyfunc.get('loader_module')!r}: a Python module imported on load "
                f"(only {PYFUNC_LOADER} is allowed)"
            )
        for key in sorted(set(pyfunc) - PYFUNC_KEYS):
            problems.append(
                f"MLmodel flavors.python_function.{key} = {pyfunc[key]!r}: "
                + ("code put on sys.path on load" if key == "code" else "not lmforge's")
            )
    flavor = flavors.get("transformers")
    if not isinstance(flavor, dict):
        problems.append("MLmodel: no transformers flavour (not a model lmforge registered)")
        return {}
    for key in sorted(set(flavor) - TRANSFORMERS_KEYS):
        problems.append(f"MLmodel flavors.transformers.{key}: loads from outside this model")
    if flavor.get("code"):
        problems.append(f"MLmodel flavors.transformers.code = {flavor['code']!r}: code paths")
    if flavor.get("task") not in TASKS:
        problems.append(f"MLmodel task = {flavor.get('task')!r}: lmforge registers {TASKS}")
    if flavor.get("torch_dtype") not in DTYPES:
        problems.append(f"MLmodel torch_dtype = {flavor.get('torch_dtype')!r}: not a dtype")
    if (flavor.get("components") or []) not in ([], ["tokenizer"]):
        problems.append(f"MLmodel components = {flavor.get('components')!r}: only tokenizer")
    return {k: v for k, v in flavor.items() if k in TRANSFORMERS_KEYS}


def _read_json(path: Path, problems: list[str], root: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path.relative_to(root).as_posix()}: unreadable ({exc})")
        return {}
    return value if isinstance(value, dict) else {}


def _code_keys(value: Any, where: str) -> Iterator[str]:
    """``where.key`` of every key in ``value`` (nested) that names custom code."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in CODE_KEYS and item:
                yield f"{where}.{key} = {item!r}"
            yield from _code_keys(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _code_keys(item, f"{where}[{i}]")


def check_model_files(root: Path, what: str) -> CheckedModel:
    """The downloaded version at ``root`` if nothing in it can run code; RegistryError naming
    each file (and field) that could, otherwise. Checks every file before anything is loaded."""
    import yaml

    try:
        mlmodel = yaml.safe_load((root / MLMODEL).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{what}: no readable MLmodel file ({exc})") from None
    mlmodel = mlmodel if isinstance(mlmodel, dict) else {}
    problems = _files_problems(root)
    flavor = _flavors_problems(mlmodel, problems)
    model_dir = _inside(
        root, flavor.get("model_binary", MODEL_SUBDIR), "MLmodel model_binary", problems
    )
    tokenizer_dir = root / TOKENIZER_SUBDIR
    if not tokenizer_dir.is_dir():  # saved without components: the tokenizer sits with the model
        tokenizer_dir = model_dir
    # What MLflow's loader would resolve (a class transformers lacks means trust_remote_code).
    named = {
        "MLmodel pipeline_model_type": flavor.get("pipeline_model_type"),
        "MLmodel instance_type": flavor.get("instance_type", "Pipeline"),
    }
    for component in flavor.get("components") or []:
        named[f"MLmodel {component}_type"] = flavor.get(f"{component}_type")
    config = _read_json(model_dir / "config.json", problems, root)
    for i, arch in enumerate(config.get("architectures") or []):
        named[f"config.json architectures[{i}]"] = arch
    tok_config_path = tokenizer_dir / "tokenizer_config.json"
    if tok_config_path.is_file():
        tok_config = _read_json(tok_config_path, problems, root)
        if "tokenizer_class" in tok_config:
            named["tokenizer_config.json tokenizer_class"] = tok_config["tokenizer_class"]
    problems += [
        f"{where} = {cls!r}: a class outside transformers (its code would come from the registry)"
        for where, cls in named.items()
        if not _is_transformers_class(cls)
    ]
    for path in sorted(root.rglob("*config.json")):  # what transformers reads auto_map from
        rel = path.relative_to(root).as_posix()
        problems += [f"{k}: custom code" for k in _code_keys(_read_json(path, problems, root), rel)]
    if not any(model_dir.glob("*.safetensors")):
        problems.append(f"{model_dir.relative_to(root).as_posix()}: no safetensors weights")
    if problems:
        raise RegistryError(
            f"{what}: refused, loading it could run code from the registry: "
            f"{'; '.join(problems)}. lmforge loads only what it registers (a transformers model "
            "in safetensors with transformers' own classes, no code); register a model saved by "
            "lmforge finetune or pretrain (lmforge register), or remove these files"
        )
    return CheckedModel(what, root, model_dir, tokenizer_dir, flavor, mlmodel)


def check_no_remote_code(root: Path, what: str) -> tuple[Path, Path]:
    """(model dir, tokenizer dir) of a downloaded model that passed :func:`check_model_files`."""
    checked = check_model_files(root, what)
    return checked.model_dir, checked.tokenizer_dir


def download_checked(client, name: str, version: str, dst: Path) -> CheckedModel:
    """``models:/NAME/VERSION`` downloaded into ``dst`` (a private folder) and checked."""
    import mlflow

    what = f"models:/{name}/{version}"
    root = mlflow.artifacts.download_artifacts(
        artifact_uri=what, dst_path=str(dst), tracking_uri=client.tracking_uri
    )
    return check_model_files(Path(root), what)


@contextlib.contextmanager
def checked_version(client, name: str, version: str, prefix: str) -> Iterator[CheckedModel]:
    """A checked download of ``models:/NAME/VERSION`` for the block; removed after it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield download_checked(client, name, version, Path(tmp))


def check_version(client, name: str, version: str) -> None:
    """Refuse ``models:/NAME/VERSION`` if anything in it could run code, for a server that
    downloads it itself (KServe): downloaded into a private folder, checked, removed."""
    with checked_version(client, name, version, "lmforge-check-"):
        pass


def load_classifier_version(client, name: str, version: str) -> tuple[Any, Any]:
    """(model, tokenizer) of ``models:/NAME/VERSION``, checked, loaded with remote code off."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with checked_version(client, name, version, "lmforge-champion-") as checked:
        model = AutoModelForSequenceClassification.from_pretrained(
            checked.model_dir, trust_remote_code=False, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            checked.tokenizer_dir, trust_remote_code=False, local_files_only=True
        )
    return model.eval(), tokenizer
