"""lmforge generate: a model folder or a registry URI; streamed; the evaluate stage's samples."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from mlflow_fixtures import tiny_config
from serve_fixtures import *  # noqa: F403  (fixtures listed in its __all__)

from lmforge.errors import ConfigError, DataError, RegistryError
from lmforge.serve.generate import Sampling, generate, read_prompts


def test_streams_each_completion_after_its_prompt_and_is_reproducible(tiny_stages):
    cfg, lm = tiny_config(), str(tiny_stages["pretrain"] / "model")
    sampling = Sampling(max_new_tokens=6, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    stream = io.StringIO()
    result = generate(cfg, lm, ["The king", "In the beginning"], sampling, stream=stream)
    assert result.model == lm
    first, second = result.completions
    assert stream.getvalue() == (
        f"The king{first.completion}\nIn the beginning{second.completion}\n"
    )
    assert 0 < first.new_tokens <= 6 and result.tokens_per_s > 0
    again = generate(cfg, lm, ["The king", "In the beginning"], sampling)
    assert [c.completion for c in again.completions] == [first.completion, second.completion]
    # A pretrain output folder is accepted for its model/ subfolder.
    greedy = generate(cfg, str(tiny_stages["pretrain"]), ["The king"], Sampling(temperature=0))
    assert greedy.model.endswith("model")


def test_evaluate_samples_are_what_generate_produces(trained_stages):
    """The report's samples and `lmforge generate` with the evaluate settings: the same text."""
    report = json.loads((trained_stages["evaluate"] / "samples.json").read_text())
    cfg = tiny_config()
    result = generate(
        cfg,
        str(trained_stages["pretrain"] / "model"),
        list(cfg.evaluate.sample_prompts),
        Sampling.of_evaluate(cfg),
    )
    assert [{"prompt": c.prompt, "completion": c.completion} for c in result.completions] == report


def test_bad_input_is_refused_with_what_to_do(trained_stages):
    cfg, lm = tiny_config(), str(trained_stages["pretrain"] / "model")
    with pytest.raises(DataError, match=r"a classifier.*ForSequenceClassification.*pass the LM"):
        generate(cfg, str(trained_stages["finetune"] / "model"), ["hi"], Sampling())
    with pytest.raises(ConfigError, match="prompt 2 is empty"):
        generate(cfg, lm, ["The king", "  "], Sampling())
    long_prompt = " ".join(["the king said that"] * 40)
    with pytest.raises(ConfigError, match=r"tokens, but the model's context is 64 tokens"):
        generate(cfg, lm, [long_prompt], Sampling())
    with pytest.raises(ConfigError, match=r"--top-p 1\.5"):
        Sampling(top_p=1.5)
    with pytest.raises(DataError, match="no model here"):
        generate(cfg, str(trained_stages["augmented"]), ["x"], Sampling())
    # Near the end of the context, the completion stops there instead of running past it.
    near = " ".join(["the"] * 60)
    done = generate(cfg, lm, [near], Sampling(max_new_tokens=40, temperature=0)).completions[0]
    assert done.stopped_at_context and done.new_tokens <= 64 - 60


def test_prompts_come_from_arguments_a_file_or_stdin(tmp_path):
    assert read_prompts(["a", "b"], None) == ["a", "b"]
    path = tmp_path / "prompts.txt"
    path.write_text("first\n\nsecond\n")
    assert read_prompts([], path) == ["first", "second"]
    assert read_prompts([], Path("-"), stdin=io.StringIO("from stdin\n")) == ["from stdin"]
    assert read_prompts([], None, stdin=io.StringIO("piped\n")) == ["piped"]
    path.write_text("\n \n")
    with pytest.raises(ConfigError, match="no prompt in"):
        read_prompts([], path)
    with pytest.raises(ConfigError, match="unreadable"):
        read_prompts([], tmp_path / "missing.txt")


def _cli(*args: str) -> int:
    from lmforge.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", *args])
    return exit_.value.code


def test_cli_streams_from_stdin_and_reports_tokens_per_second(tiny_stages, capsys, monkeypatch):
    lm = str(tiny_stages["pretrain"] / "model")
    monkeypatch.setattr(sys, "stdin", io.StringIO("The king\n"))
    assert _cli("--model", lm, "--max-new-tokens", "4", "--temperature", "0") == 0
    out = capsys.readouterr()
    assert out.out.startswith("The king") and out.out.endswith("\n")
    assert f"{lm}: " in out.err and "tokens/s" in out.err.splitlines()[-1]
    assert _cli("--model", lm, "") == 2
    err = capsys.readouterr().err
    assert "error: lmforge generate: " in err and "prompt 1 is empty" in err


@pytest.mark.slow
def test_registry_uri_resolves_the_alias_and_refuses_what_is_not_an_lm(registry):
    cfg = registry
    lm, clf = cfg.register.lm_model_name, cfg.register.classifier_model_name
    result = generate(cfg, f"models:/{lm}@champion", ["The king"], Sampling(max_new_tokens=3))
    assert result.model == f"models:/{lm}/1"  # pinned: the alias resolved once
    assert result.completions[0].new_tokens <= 3
    with pytest.raises(RegistryError, match=r"has no alias 'best' \(aliases: challenger, champ"):
        generate(cfg, f"models:/{lm}@best", ["x"], Sampling())
    with pytest.raises(RegistryError, match=f"models:/{clf}/1: a classifier"):
        generate(cfg, f"models:/{clf}@champion", ["x"], Sampling())
    with pytest.raises(RegistryError, match="not in the registry"):
        generate(cfg, "models:/no-such-model@champion", ["x"], Sampling())
    with pytest.raises(RegistryError, match="no such version"):
        generate(cfg, f"models:/{lm}/9", ["x"], Sampling())
