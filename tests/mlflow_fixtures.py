"""Shared fixtures of the fine-tune / evaluate / registry tests: tiny stage outputs and MLflow.

- ``tiny_stages``: the folders the later stages read, written in their contract layouts by hand
  (never from a hub): ``pretrain/model`` (a 2-layer, width-32 Llama with a BPE tokenizer trained
  here on a few sentences), ``augmented/labelled/*.jsonl`` (a separable ham/spam toy set) and
  ``tokenized/blocks`` + ``tokenized/tokenizer``.
- ``embedded_store``: a Config whose MLflow store is a fresh sqlite file (and artifact folder)
  under the test's tmp dir.
- ``mlflow_server``: a real ``mlflow server`` on loopback (sqlite backend, one worker), polled on
  ``/health`` until it answers; ``server_store`` is a Config pointing at it.
- ``postgres`` (its URI: ``postgres_uri``): a fresh database on a real PostgreSQL server that
  ``scripts/postgres.sh`` installs (as root, Debian's package) and starts in a folder of its own
  for the session; skipped, with the script's reason, where PostgreSQL is missing and cannot be
  installed (not root), unless ``LMFORGE_REQUIRE_POSTGRES=1`` (CI) makes that an error.
  ``mlflow_server_pg`` is an ``mlflow server`` on it (the production backend,
  k8s/base/mlflow.yaml) and ``server_store_pg`` a Config pointing at that.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import Config, load_config

__all__ = [
    "blank_store_db",
    "embedded_store",
    "mlflow_server",
    "mlflow_server_pg",
    "postgres",
    "postgres_uri",
    "server_store",
    "server_store_pg",
    "tiny_stages",
    "trained_stages",
]

HAM = [
    "meeting",
    "lunch",
    "tomorrow",
    "project",
    "report",
    "family",
    "weekend",
    "thanks",
    "notes",
    "call",
    "office",
    "garden",
]
SPAM = [
    "free",
    "prize",
    "winner",
    "cash",
    "click",
    "offer",
    "money",
    "claim",
    "urgent",
    "credit",
    "viagra",
    "casino",
]
COMMON = ["the", "a", "to", "and", "you", "your", "please", "this", "is", "for"]


def toy_text(label: str, rng: random.Random) -> str:
    words = HAM if label == "ham" else SPAM
    return " ".join(rng.choice(words + COMMON) for _ in range(rng.randint(6, 14)))


def write_labelled(augmented_dir: Path, sizes=(("train", 96), ("validation", 24), ("test", 32))):
    rng = random.Random(0)
    for split, n in sizes:
        rows = []
        for i in range(n):
            label = "spam" if i % 3 == 0 else "ham"  # 2:1 ham, so the majority class is ham
            row = {"id": f"{split}-{i}", "text": toy_text(label, rng), "label": label}
            if split == "train" and i % 5 == 0:
                row.update(augmented_from=f"{split}-{i - 1}", ops=["random_swap"])
            rows.append(row)
        path = augmented_dir / "labelled" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def train_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    sentences = [toy_text(lbl, rng) for lbl in ("ham", "spam") * 50]
    sentences += ["The king said that in the beginning she was there."] * 5
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>", "<|unk|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sentences, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
    )
    fast.save_pretrained(out_dir)
    return fast


def write_pretrained(pretrain_dir: Path, tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model_dir = pretrain_dir / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def write_blocks(tokenized_dir: Path, tokenizer, block_size: int = 32) -> None:
    rng = random.Random(2)
    text = " ".join(toy_text(lbl, rng) for lbl in ("ham", "spam") * 40)
    ids = np.array(tokenizer(text)["input_ids"], dtype=np.uint16)
    blocks = tokenized_dir / "blocks"
    blocks.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in ("train", "validation", "test"):
        n = len(ids) // block_size
        ids[: n * block_size].tofile(blocks / f"{split}.bin")
        splits[split] = {"n_blocks": n, "n_tokens": n * block_size}
    meta = {
        "dtype": "uint16",
        "block_size": block_size,
        "vocab_size": len(tokenizer),
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
        "splits": splits,
    }
    (blocks / "meta.json").write_text(json.dumps(meta))
    tokenizer.save_pretrained(tokenized_dir / "tokenizer")


def tiny_config(*overrides: str) -> Config:
    """Defaults shrunk to the toy data: few steps, short examples, fp32, one process."""
    base = [
        "finetune.max_steps=30",
        "finetune.micro_batch_size=8",
        "finetune.max_length=24",
        "finetune.warmup_steps=3",
        "finetune.lr=0.003",
        "finetune.eval_every=10",
        "finetune.log_every=5",
        "finetune.ckpt_every=0",
        "finetune.precision=fp32",
        "finetune.eval_batches=2",
        "finetune.num_threads=1",
        "evaluate.max_perplexity_batches=2",
        "evaluate.sample_max_new_tokens=5",
        "evaluate.batch_size=8",
    ]
    return load_config(None, [*base, *overrides])


@pytest.fixture(scope="session")
def tiny_stages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stages")
    tokenizer = train_tokenizer(root / "tokenizer")
    write_pretrained(root / "pretrain", tokenizer)
    write_labelled(root / "augmented")
    write_blocks(root / "tokenized", tokenizer)
    return {name: root / name for name in ("pretrain", "augmented", "tokenized")}


@pytest.fixture(scope="session")
def trained_stages(tiny_stages, tmp_path_factory) -> dict[str, Path]:
    """``tiny_stages`` plus ``finetune`` and ``evaluate`` outputs of the tiny config (MLflow runs
    go to a store of their own)."""
    from lmforge.evaluate import evaluate
    from lmforge.train.finetune import finetune

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        _store_env(mp, f"sqlite:///{root / 'mlflow.db'}")
        cfg = tiny_config(f"tracking.artifact_location={root / 'mlartifacts'}")
        finetune(cfg, tiny_stages["pretrain"], tiny_stages["augmented"], root / "finetune")
        evaluate(
            cfg,
            tiny_stages["pretrain"],
            root / "finetune",
            tiny_stages["tokenized"],
            tiny_stages["augmented"],
            root / "evaluate",
        )
    return {**tiny_stages, "finetune": root / "finetune", "evaluate": root / "evaluate"}


def _store_env(monkeypatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # One parent run per test, whatever the git state.
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", f"test-{os.getpid()}-{time.monotonic_ns()}")


@pytest.fixture(scope="session")
def blank_store_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite database with its schema: creating one takes seconds, copying none."""
    import mlflow

    path = tmp_path_factory.mktemp("blank-store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def embedded_store(tmp_path, monkeypatch, blank_store_db) -> Config:
    """A Config on a fresh embedded sqlite store (and artifact folder) in ``tmp_path``."""
    shutil.copyfile(blank_store_db, tmp_path / "mlflow.db")
    _store_env(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tiny_config(f"tracking.artifact_location={tmp_path / 'mlartifacts'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)  # a server starts in seconds: polling often ends the wait sooner
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout_s}s")


def start_server(
    backend_uri: str, artifacts: Path, log: Path, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """A one-worker ``mlflow server`` on ``port`` (default: a free one), healthy when returned."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    # Its own process group: the server's workers go down with it.
    proc = subprocess.Popen(
        cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except RuntimeError as exc:
        stop_server(proc)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise RuntimeError(f"{exc}; the end of {log}:\n{tail}") from None
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)  # a test server: no need to wait for a graceful drain
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, blank_store_db):
    """A real ``mlflow server`` (sqlite backend, one worker) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(blank_store_db, root / "mlflow.db")
    proc, url = start_server(
        f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log"
    )
    yield url
    stop_server(proc)


POSTGRES_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"


class Postgres:
    """A PostgreSQL cluster of this session, run by scripts/postgres.sh (stop and start again:
    the outage tests)."""

    def __init__(self, cluster: Path, port: int, db: str):
        self.cluster, self.port, self.db = cluster, port, db
        self.uri = f"postgresql://lmforge@127.0.0.1:{port}/{db}"

    def _script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(POSTGRES_SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=900,  # apt-get install on a machine without it
        )

    def start(self) -> None:
        proc = self._script("start", str(self.cluster), str(self.port), self.db)
        reason = proc.stderr.strip()
        if proc.returncode == 3 and os.environ.get("LMFORGE_REQUIRE_POSTGRES") != "1":
            pytest.skip(f"MLflow on PostgreSQL not tested: {reason}")
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/postgres.sh start failed ({proc.returncode}): {reason}")

    def stop(self) -> None:
        self._script("stop", str(self.cluster)).check_returncode()


@pytest.fixture(scope="session")
def postgres():
    """A fresh database on a PostgreSQL server of this session (see the module docstring)."""
    # Not under pytest's tmp dirs (mode 0700): as root the cluster runs as the `postgres` user.
    root = Path(tempfile.mkdtemp(prefix="lmforge-postgres-"))
    root.chmod(0o755)
    server = Postgres(root / "cluster", free_port(), f"mlflow_{uuid.uuid4().hex[:8]}")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_uri(postgres) -> str:
    return postgres.uri


@pytest.fixture(scope="session")
def mlflow_server_pg(postgres_uri, tmp_path_factory):
    """A real ``mlflow server`` (PostgreSQL backend, one worker) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server-pg")
    proc, url = start_server(postgres_uri, root / "artifacts", root / "server.log")
    yield url
    stop_server(proc)


def _server_config(url: str, monkeypatch) -> Config:
    """A Config on a shared server, with model names of its own (tests share the server)."""
    _store_env(monkeypatch, url)
    tag = uuid.uuid4().hex[:6]
    return tiny_config(
        f"register.lm_model_name=lm-{tag}",
        f"register.classifier_model_name=classifier-{tag}",
        "tracking.request_timeout_s=60",  # a loaded 2-core CI machine: no flaky read timeouts
    )


@pytest.fixture
def server_store(mlflow_server, monkeypatch) -> Config:
    """A Config on the shared sqlite-backed server."""
    return _server_config(mlflow_server, monkeypatch)


@pytest.fixture
def server_store_pg(mlflow_server_pg, monkeypatch) -> Config:
    """A Config on the shared PostgreSQL-backed server."""
    return _server_config(mlflow_server_pg, monkeypatch)
