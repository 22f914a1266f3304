"""Issue 27, the same defect as the ids': a pairs file was split by a hash of the unmasked
prompt, so prompts that differ only in masked personal data (one prompt once masked) landed in
training and in the held-out splits alike, and the split held a bit of what was masked."""

from __future__ import annotations

import json

from mlflow_fixtures import tiny_config

from lmforge.data.sft_pairs import load_pairs


def test_prompts_that_differ_only_in_masked_data_share_one_split(tmp_path):
    rows = [
        {"instruction": f"Reset the password of user{i}@example.com now.", "output": "Done."}
        for i in range(60)
    ] + [
        {"instruction": f"Summarise note number {i} in one line.", "output": "Ok."}
        for i in range(60)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(
        f"finetune.sft_data={path}",
        "finetune.prompt_field=instruction",
        "finetune.response_field=output",
        "finetune.sft_holdout_share=0.5",
    )
    splits = load_pairs(cfg, tmp_path)
    masked = "Reset the password of <|email|> now."
    holding = {split for split, pairs in splits.items() for p in pairs if p.prompt == masked}
    assert len(holding) == 1, holding  # all 60 in one split, none straddling train and test
    assert sum(p.prompt == masked for pairs in splits.values() for p in pairs) == 60
