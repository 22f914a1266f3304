"""The figures of docs/multimodal.md: on the shipped captioned images, the image-conditioned
model's caption ROUGE-L / CIDEr-D and retrieval recall against the text-only baseline and chance,
over several seeds.

    python benchmarks/multimodal_figures.py --data outputs/images/augmented \\
        --test outputs/images/validated/test --out /tmp/mm-figures --seeds 0 1 2

Without a pretrained decoder (outputs/pretrain/model) it builds one of the model section's shape
(cpu-tiny) around a byte-level BPE tokenizer trained on the training captions, randomly
initialised; so that the decoder learns the captions' language, instruct trains it (full) with
the vision encoder after a short alignment. Every run is the steps' own functions.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def caption_decoder(train_dir: Path, out: Path) -> Path:
    """A random cpu-tiny Llama decoder with a BPE tokenizer of the training captions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmforge.config import load_config
    from lmforge.data.images.pairs import read_pairs
    from lmforge.model import build_config, build_model

    captions = [p.caption for p in read_pairs(train_dir)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    mcfg = load_config(None).model
    config = build_config(mcfg, len(fast), fast.eos_token_id, fast.pad_token_id)
    build_model(config, seed=0).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", nargs="*", default=[])
    args = ap.parse_args()

    from lmforge.config import load_config
    from lmforge.multimodal.evaluate import evaluate_multimodal
    from lmforge.multimodal.train import align, instruct

    decoder = caption_decoder(args.data / "train", args.out / "decoder")
    reports = []
    for seed in args.seeds:
        run = args.out / f"seed-{seed}"
        cfg = load_config(
            None,
            [
                f"multimodal.decoder={decoder}",
                f"multimodal.seed={seed}",
                f"multimodal.align.seed={seed}",
                f"multimodal.instruct.seed={seed}",
                "multimodal.instruct.train_vision=true",
                "multimodal.instruct.questions_per_image=1",
                f"tracking.tracking_uri=sqlite:///{args.out / 'mlflow.db'}",
                *args.overrides,
            ],
        )
        if not (run / "instruct" / "model").is_dir():  # a rerun scores what was trained
            align(cfg, None, args.data, run / "align")
            instruct(cfg, run / "align", args.data, run / "instruct")
        reports.append(
            evaluate_multimodal(cfg, run / "instruct" / "model", args.test, run / "eval")
        )
    summary = {}
    for who in ("model", "text_only", "chance"):
        for key in ("rouge_l", "cider", "recall_at_1", "recall_at_5"):
            values = [r[who][key] for r in reports]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[f"{who}.{key}"] = {"mean": statistics.mean(values), "sd": sd, "runs": values}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
