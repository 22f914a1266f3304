"""Sample from the language model: a model folder or a registry URI, prompts in, text out.

One code path for every sample lmforge produces: ``lmforge generate`` streams tokens to the
terminal through :func:`complete`, and the evaluate stage's report samples are the same call
without a stream. A registry URI (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) is resolved
to a pinned version, its files downloaded and loaded with transformers' own classes only
(``lmforge.registry.loading``: remote code refused and disabled).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lmforge.config import Config
from lmforge.errors import ConfigError, DataError, RegistryError

URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn; ``temperature`` 0 is greedy, ``top_k`` 0 and ``top_p`` 1 are off."""

    max_new_tokens: int = 40
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        rules = {
            "max_new_tokens": self.max_new_tokens >= 0,
            "temperature": self.temperature >= 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "repetition_penalty": self.repetition_penalty > 0,
        }
        allowed = {
            "max_new_tokens": ">= 0",
            "temperature": ">= 0 (0: greedy)",
            "top_k": ">= 0 (0: off)",
            "top_p": "> 0 and <= 1 (1: off)",
            "repetition_penalty": "> 0 (1: off)",
        }
        for key, ok in rules.items():
            if not ok:
                raise ConfigError(
                    f"--{key.replace('_', '-')} {getattr(self, key)!r}: allowed {allowed[key]}"
                )

    @classmethod
    def of_evaluate(cls, cfg: Config, **changes: Any) -> Sampling:
        """The evaluate stage's sampling (``evaluate.sample_*``), with ``changes`` applied."""
        ecfg = cfg.evaluate
        base = {
            "max_new_tokens": ecfg.sample_max_new_tokens,
            "temperature": ecfg.sample_temperature,
            "seed": ecfg.sample_seed,
        }
        return cls(**{**base, **{k: v for k, v in changes.items() if v is not None}})


@dataclass
class Completion:
    prompt: str
    completion: str
    new_tokens: int
    seconds: float
    stopped_at_context: bool = False  # the model's context ended the completion early


@dataclass
class GenerateResult:
    model: str  # the folder, or models:/NAME/VERSION (the alias resolved)
    completions: list[Completion] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        seconds = sum(c.seconds for c in self.completions)
        return sum(c.new_tokens for c in self.completions) / seconds if seconds > 0 else 0.0


def _stream_to(tokenizer, stream: IO[str]):
    """transformers' TextStreamer, writing the completion (not the prompt) to ``stream``."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            stream.write(text + ("\n" if stream_end else ""))
            stream.flush()

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def complete(
    model, tokenizer, prompt: str, sampling: Sampling, seed: int, stream: IO[str] | None = None
) -> Completion:
    """One completion of ``prompt``, seeded with ``seed``; tokens written to ``stream`` as they
    come. A prompt that fills the model's context is refused; the completion stops at its end."""
    import torch

    if not prompt.strip():
        raise ConfigError("empty prompt: give the text the model should continue")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    context = getattr(model.config, "max_position_embeddings", None)
    room = sampling.max_new_tokens
    if context is not None:
        if ids.shape[1] >= context:
            raise ConfigError(
                f"prompt {prompt[:40]!r}...: {ids.shape[1]} tokens, but the model's context is "
                f"{context} tokens (prompt and completion together); shorten the prompt"
            )
        room = min(room, context - ids.shape[1])
    torch.manual_seed(seed)
    streamer = _stream_to(tokenizer, stream) if stream is not None else None
    do_sample = sampling.temperature > 0
    start = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(
            ids.to(model.device),
            attention_mask=torch.ones_like(ids).to(model.device),
            max_new_tokens=room,
            do_sample=do_sample,
            temperature=sampling.temperature or None,
            top_k=(sampling.top_k or None) if do_sample else None,
            top_p=sampling.top_p if do_sample and sampling.top_p < 1 else None,
            repetition_penalty=(
                sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None
            ),
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            streamer=streamer,
        )
    seconds = time.perf_counter() - start
    new = gen[0, ids.shape[1] :]
    return Completion(
        prompt=prompt,
        completion=tokenizer.decode(new, skip_special_tokens=True),
        new_tokens=int(new.shape[0]),
        seconds=seconds,
        stopped_at_context=room < sampling.max_new_tokens,
    )


def complete_all(
    model, tokenizer, prompts: list[str], sampling: Sampling, stream: IO[str] | None = None
) -> list[Completion]:
    """Each prompt completed with its own seed (``seed + i``): a report is reproducible run to run
    whatever the order of other work."""
    out = []
    for i, prompt in enumerate(prompts):
        if stream is not None:
            stream.write(prompt)
            stream.flush()
        out.append(complete(model, tokenizer, prompt, sampling, sampling.seed + i, stream))
    return out


# --------------------------------------------------------------------------------------------
# Where the model comes from
# --------------------------------------------------------------------------------------------


def _require_lm(config: dict[str, Any], where: str, error: type[Exception]) -> None:
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        kind = (
            "a classifier"
            if any("ForSequenceClassification" in str(a) for a in archs)
            else ("not a language model")
        )
        raise error(
            f"{where}: {kind} ({', '.join(map(str, archs)) or 'no architectures'}), but generate "
            "needs a causal language model: pass the LM, e.g. models:/lmforge-lm@champion or "
            "outputs/pretrain/model"
        )


def _load_dir(model_dir: Path, tokenizer_dir: Path, where: str, error: type[Exception]):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_lm(json.loads((model_dir / "config.json").read_text()), where, error)
    local = {"local_files_only": True, "trust_remote_code": False}  # never the hub, no code
    model = AutoModelForCausalLM.from_pretrained(model_dir, **local)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, **local)
    return model.eval(), tokenizer


def resolve_version(cfg: Config, name: str, alias: str | None, version: str | None):
    """The registry's model version for ``NAME@ALIAS`` or ``NAME/VERSION`` (errors say which)."""
    from lmforge import tracking
    from lmforge.registry.aliases import check_model, find_alias

    client = tracking.client(cfg)
    check_model(client, name)
    if version is not None:
        from mlflow.exceptions import MlflowException

        try:
            return client, client.get_model_version(name, version)
        except MlflowException:
            raise RegistryError(
                f"models:/{name}/{version}: no such version in the registry at "
                f"{client.tracking_uri}; list them in the MLflow UI (lmforge ui)"
            ) from None
    found = find_alias(client, name, alias)
    if found is None:
        known = sorted((client.get_registered_model(name).aliases or {}).keys())
        raise RegistryError(
            f"models:/{name}@{alias}: model {name} has no alias {alias!r} (aliases: "
            f"{', '.join(known) or 'none'}); run `lmforge promote --model {name}` or use one "
            "of them"
        )
    return client, found


def load_lm(cfg: Config, source: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, what) for a model folder or a ``models:/`` URI; refuse a classifier."""
    if source.startswith("models:/"):
        match = URI.match(source)
        if match is None:
            raise RegistryError(f"{source}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        from lmforge.registry.loading import checked_version

        client, mv = resolve_version(cfg, match["name"], match["alias"], match["version"])
        what = f"models:/{mv.name}/{mv.version}"  # pinned: the alias may move while we load
        with checked_version(client, mv.name, str(mv.version), "lmforge-generate-") as checked:
            model, tokenizer = _load_dir(
                checked.model_dir, checked.tokenizer_dir, what, RegistryError
            )
        return model, tokenizer, what
    folder = Path(source)
    if (folder / "MLmodel").is_file():  # a downloaded MLflow model
        from lmforge.registry.loading import check_no_remote_code

        model_dir, tokenizer_dir = check_no_remote_code(folder, str(folder))
        return (*_load_dir(model_dir, tokenizer_dir, str(folder), DataError), str(folder))
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"  # a pretrain output folder
    if not (folder / "config.json").is_file():
        raise DataError(
            f"{source}: no model here (config.json); pass a model folder (outputs/pretrain/model) "
            "or a registry URI (models:/lmforge-lm@champion)"
        )
    return (*_load_dir(folder, folder, str(folder), DataError), str(folder))


def read_prompts(prompts: list[str], file: Path | None, stdin: IO[str] | None = None) -> list[str]:
    """Prompts from the arguments, else a file (one per line; ``-``: stdin), else stdin."""
    if prompts:
        lines = list(prompts)
    elif file is not None:
        try:
            text = (stdin or sys.stdin).read() if str(file) == "-" else Path(file).read_text()
        except OSError as exc:
            raise ConfigError(f"--file {file}: unreadable ({exc.strerror})") from None
        lines = [line for line in text.splitlines() if line.strip()]
    else:
        stdin = stdin or sys.stdin
        if stdin.isatty():
            raise ConfigError("no prompt: pass it as an argument, with --file, or on stdin")
        lines = [line for line in stdin.read().splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"no prompt{f' in {file}' if file else ''}: give at least one")
    check_prompts(lines)
    return lines


def check_prompts(prompts: list[str]) -> None:
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ConfigError(f"prompt {i + 1} is empty: give the text the model should continue")


def chat_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` as an instruction-tuned model saw prompts in training: in the chat template
    saved with it (``lmforge.train.sft``), ending with the cue for its answer."""
    from lmforge.train.sft import PLAIN_TEMPLATE, prompt_text

    template = getattr(tokenizer, "chat_template", None) or PLAIN_TEMPLATE
    return prompt_text(tokenizer, template, prompt)


def generate(
    cfg: Config,
    source: str,
    prompts: list[str],
    sampling: Sampling,
    stream: IO[str] | None = None,
    *,
    chat: bool = False,
) -> GenerateResult:
    """Complete ``prompts`` with the LM at ``source``, streaming to ``stream`` when given;
    ``chat``: each prompt in the model's chat template first (an SFT model)."""
    check_prompts(prompts)  # before minutes of downloading
    model, tokenizer, what = load_lm(cfg, source)
    if chat:
        prompts = [chat_prompt(tokenizer, p) for p in prompts]
    return GenerateResult(
        model=what, completions=complete_all(model, tokenizer, prompts, sampling, stream)
    )
