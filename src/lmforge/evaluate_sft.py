"""The evaluate step for an instruction-tuned model (``finetune.task: sft``).

``evaluate_sft(cfg, finetuned_dir, out_dir)`` (what ``evaluate`` calls when finetune wrote a
causal LM) scores, on the same held-out pairs (``finetuned_dir/pairs/test.jsonl``, the first
``evaluate.sft_max_pairs``), each prompt formatted with the chat template saved in the model's
tokenizer:

- the tuned model (``model/``), the model without fine-tuning (``baseline/``) and the
  registry's champion (``models:/<register.sft_model_name>@champion``, remote code refused);
- response perplexity: exp of the mean loss on the reference response tokens;
- exact match and ROUGE-L (``lmforge.metrics``) of the greedy generation (at most
  ``evaluate.sft_max_new_tokens``, ended at EOS) against the reference.

The gate: ``register.sft_primary_metric`` against ``register.sft_min_primary``, and better than
the model without fine-tuning; beating the champion is reported here and enforced by
``lmforge promote``. Output: ``report.json``, ``report.md`` (with generated samples),
``samples.json``, ``metrics.json`` (both models' numbers), and ``plots/confusion.{csv,png}``:
exact match per pair, untuned (rows) against tuned (columns), in DVC's confusion template.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import Config
from lmforge.data.sft_pairs import Pair, read_written
from lmforge.errors import DataError
from lmforge.metrics import beats, exact_match, gate, perplexity_of, rouge_l
from lmforge.outputs import atomic_output_dir
from lmforge.tracking import is_number

OUTCOMES = ("miss", "exact")


@dataclass
class SftEvaluationResult:
    task: str
    response_perplexity: float
    exact_match: float
    rouge_l: float
    base_response_perplexity: float | None  # the model without fine-tuning, same pairs
    base_exact_match: float | None
    base_rouge_l: float | None
    n_pairs: int
    champion_version: str | None
    champion_primary: float | None
    primary_metric: str
    passed: bool


def is_sft_output(finetuned_dir: Path) -> bool:
    """Whether finetune wrote a causal LM (task sft) rather than a classifier."""
    path = Path(finetuned_dir) / "model" / "config.json"
    try:
        archs = json.loads(path.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False  # evaluate's own checks name the missing model
    return any(str(a).endswith("ForCausalLM") for a in archs)


def load_lm_dir(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise DataError(f"{model_dir}: no model (config.json); run finetune first")
    local = {"local_files_only": True, "trust_remote_code": False}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **local).eval()
    return model, AutoTokenizer.from_pretrained(model_dir, **local)


def generate_greedy(model, tokenizer, prompts: list[list[int]], max_new: int, batch: int) -> list:
    """Greedy completions (decoded, stripped) of token-id prompts, left-padded in batches of
    similar length; each ends at EOS or after ``max_new`` tokens."""
    import torch

    pad = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    # The tokenizer's EOS (what training appends) and the model's own stop tokens (a chat
    # model's end of turn).
    own = getattr(model.generation_config, "eos_token_id", None)
    stops = {tokenizer.eos_token_id, *(own if isinstance(own, list) else [own])} - {None}
    out: list[str] = [""] * len(prompts)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        with torch.no_grad():
            gen = model.generate(
                ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=sorted(stops) or None,
                use_cache=True,
            )
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    return out


def score(model, tokenizer, pairs: list[Pair], cfg: Config) -> tuple[dict[str, float], list[str]]:
    """Response perplexity, exact match and ROUGE-L of one model on ``pairs``, and its
    generations."""
    import torch

    from lmforge.train.sft import IGNORE, PLAIN_TEMPLATE, collate, encode_pairs, response_nll

    template = getattr(tokenizer, "chat_template", None) or PLAIN_TEMPLATE
    context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    max_new = cfg.evaluate.sft_max_new_tokens
    encoded = encode_pairs(tokenizer, template, pairs, min(cfg.finetune.max_length, context))
    pad = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(pairs), cfg.evaluate.batch_size):
            idx = range(start, min(start + cfg.evaluate.batch_size, len(pairs)))
            nll, n = response_nll(model, collate(encoded, idx, pad, model.device))
            total, count = total + nll, count + n
    # The prompt as training saw it (its labels are IGNORE), cut so the completion fits.
    room = max(1, context - max_new)
    prompts = [
        ids[: next(i for i, t in enumerate(labels) if t != IGNORE)][-room:]
        for ids, labels in zip(encoded.ids, encoded.labels, strict=True)
    ]
    generated = generate_greedy(model, tokenizer, prompts, max_new, cfg.evaluate.batch_size)
    scored = list(zip(generated, pairs, strict=True))
    numbers = {
        "response_perplexity": perplexity_of(total / max(count, 1)),
        "response_loss": total / max(count, 1),
        "exact_match": float(np.mean([exact_match(g, p.response) for g, p in scored])),
        "rouge_l": float(np.mean([rouge_l(g, p.response) for g, p in scored])),
        "n_pairs": float(len(pairs)),
    }
    return numbers, generated


def champion(cfg: Config) -> tuple[str, Any, Any] | None:
    """(version, model, tokenizer) of ``models:/<register.sft_model_name>@champion``, or None."""
    from lmforge import tracking
    from lmforge.registry.aliases import find_alias
    from lmforge.serve.generate import load_lm

    name = cfg.register.sft_model_name
    found = find_alias(
        tracking.client(cfg), name, cfg.register.champion_alias, model_may_be_missing=True
    )
    if found is None:
        return None
    model, tokenizer, _ = load_lm(cfg, f"models:/{name}/{found.version}")  # pinned version
    return str(found.version), model, tokenizer


def evaluate_sft(cfg: Config, finetuned_dir: Path, out_dir: Path) -> SftEvaluationResult:
    """Score the tuned model, the untuned one and the champion; write ``out_dir``."""
    import torch

    from lmforge import tracking

    torch.manual_seed(cfg.evaluate.sample_seed)
    primary = cfg.register.sft_primary_metric
    pairs = read_written(Path(finetuned_dir) / "pairs" / "test.jsonl")
    if cfg.evaluate.sft_max_pairs:
        pairs = pairs[: cfg.evaluate.sft_max_pairs]
    if not pairs:
        raise DataError(f"{finetuned_dir}/pairs/test.jsonl: no held-out pairs to score")
    report: dict[str, Any] = {"task": "sft", "primary_metric": primary}
    report["generation"] = {"max_new_tokens": cfg.evaluate.sft_max_new_tokens, "do_sample": False}
    generations: dict[str, list[str]] = {}
    report["sft"], generations["sft"] = score(
        *load_lm_dir(Path(finetuned_dir) / "model"), pairs, cfg
    )
    report["base"] = None
    base_dir = Path(finetuned_dir) / "baseline"
    if (base_dir / "config.json").is_file():
        report["base"], generations["base"] = score(*load_lm_dir(base_dir), pairs, cfg)
    report["champion"] = None
    found = champion(cfg) if cfg.evaluate.compare_champion else None
    if found is not None:
        version, model, tokenizer = found
        numbers, generations["champion"] = score(model, tokenizer, pairs, cfg)
        report["champion"] = {"version": version, **numbers}

    tuned = report["sft"]
    checks = gate(primary, tuned, None, cfg.register.sft_min_primary, 0.0)[:1]
    base_check = beats("model without fine-tuning", primary, tuned, report["base"])
    if base_check is not None:
        checks.append(base_check)
    informative = []
    if report["champion"] is not None:
        name = f"champion v{report['champion']['version']}"
        informative.append(beats(name, primary, tuned, report["champion"]))
    passed = all(c.passed for c in checks)
    report["gate"] = {
        "passed": passed,
        "checks": [asdict(c) for c in checks],
        "comparisons": [asdict(c) for c in informative],
    }
    n_samples = min(cfg.evaluate.sft_samples, len(pairs))
    report["samples"] = [
        {
            "prompt": pairs[i].prompt,
            "reference": pairs[i].response,
            **{who: generations[who][i] for who in generations},
        }
        for i in range(n_samples)
    ]
    base = report["base"] or {}
    result = SftEvaluationResult(
        task="sft",
        response_perplexity=tuned["response_perplexity"],
        exact_match=tuned["exact_match"],
        rouge_l=tuned["rouge_l"],
        base_response_perplexity=base.get("response_perplexity"),
        base_exact_match=base.get("exact_match"),
        base_rouge_l=base.get("rouge_l"),
        n_pairs=len(pairs),
        champion_version=report["champion"] and report["champion"]["version"],
        champion_primary=report["champion"] and report["champion"].get(primary),
        primary_metric=primary,
        passed=passed,
    )
    metrics = {k: v for k, v in asdict(result).items() if is_number(v)}
    metrics["gate_passed"] = int(passed)
    hits = {
        who: [exact_match(g, p.response) for g, p in zip(gen, pairs, strict=True)]
        for who, gen in generations.items()
    }
    with tracking.stage_run(cfg, "evaluate", sections=("evaluate", "register")):
        import mlflow

        with atomic_output_dir(Path(out_dir)) as tmp:
            _write(tmp, report, metrics, hits)
        mlflow.log_metrics(metrics)
        _log_on_models(cfg, report, Path(finetuned_dir))
        for name in ("report.md", "report.json", "samples.json", "plots/confusion.png"):
            mlflow.log_artifact(
                str(Path(out_dir) / name), str(Path(name).parent) if "/" in name else None
            )
    return result


def _log_on_models(cfg, report: dict, finetuned_dir: Path) -> None:
    """The held-out pairs as the run's input; the tuned model's and the champion's numbers on
    each one's LoggedModel (``test_rouge_l``...; the champion's first, the tuned model's last)."""
    import mlflow

    from lmforge import lineage, tracking

    client, run_id = tracking.client(cfg), mlflow.active_run().info.run_id
    test = tracking.dataset(finetuned_dir / "pairs" / "test.jsonl", "sft-pairs-test", "test")
    lineage.log_datasets(client, run_id, [test])

    def numbers(section):
        return {f"{lineage.TEST_PREFIX}{k}": v for k, v in section.items() if k != "version"}

    if report["champion"] is not None:
        champ = client.get_model_version(cfg.register.sft_model_name, report["champion"]["version"])
        model_id = lineage.version_model_id(champ)
        lineage.log_model_metrics(client, run_id, model_id, numbers(report["champion"]), test)
    model_id = lineage.trained_models(finetuned_dir).get(lineage.SFT_MODEL)
    lineage.log_model_metrics(client, run_id, model_id, numbers(report["sft"]), test)


def _write(tmp: Path, report: dict, metrics: dict, hits: dict[str, list[float]]) -> None:
    import csv

    (tmp / "plots").mkdir()
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (tmp / "samples.json").write_text(json.dumps(report["samples"], indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows = hits.get("base", hits["sft"])  # without a baseline: tuned against itself
    pairs = [(OUTCOMES[int(b)], OUTCOMES[int(t)]) for b, t in zip(rows, hits["sft"], strict=True)]
    with (tmp / "plots" / "confusion.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])  # DVC's template: untuned, tuned
        writer.writerows(pairs)
    _outcome_png(tmp / "plots" / "confusion.png", pairs)
    (tmp / "report.md").write_text(_markdown(report))


def _outcome_png(path: Path, pairs: list[tuple[str, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.zeros((2, 2), dtype=int)
    for base, tuned in pairs:
        counts[OUTCOMES.index(base), OUTCOMES.index(tuned)] += 1
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(2), OUTCOMES)
    ax.set_yticks(range(2), OUTCOMES)
    ax.set_xlabel("fine-tuned")
    ax.set_ylabel("without fine-tuning")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center")
    ax.set_title("Exact match per held-out pair")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    primary = report["primary_metric"]
    lines = ["# Evaluation report: instruction tuning", "", "## Held-out pairs", ""]
    lines += [
        "| model | response perplexity | exact match | ROUGE-L |",
        "| --- | --- | --- | --- |",
    ]
    named = [("fine-tuned", report["sft"]), ("without fine-tuning", report["base"])]
    if report["champion"] is not None:
        named.append((f"champion v{report['champion']['version']}", report["champion"]))
    for name, s in named:
        if s is not None:
            lines.append(
                f"| {name} | {s['response_perplexity']:.2f} | {s['exact_match']:.4f} "
                f"| {s['rouge_l']:.4f} |"
            )
    n = int(report["sft"]["n_pairs"])
    lines += ["", f"{n} pairs; greedy, at most {report['generation']['max_new_tokens']} tokens."]
    gate_ = report["gate"]
    lines += ["", f"Gate on {primary}: **{'passed' if gate_['passed'] else 'failed'}**", ""]
    lines += [
        f"- {'✅' if c['passed'] else '❌'} {c['name']}: {c['detail']}" for c in gate_["checks"]
    ]
    lines += [
        f"- {'↑' if c['passed'] else '↓'} {c['name']}: {c['detail']}" for c in gate_["comparisons"]
    ]
    lines += ["", "## Samples (greedy)", ""]
    for s in report["samples"]:
        prompt = s["prompt"] if len(s["prompt"]) <= 300 else s["prompt"][:300] + " …"
        lines += ["```text", prompt, "```", "", f"- reference: {s['reference']}"]
        lines += [f"- {who}: {s[who]}" for who in ("sft", "base", "champion") if who in s]
        lines.append("")
    return "\n".join(lines)
