"""Config of the evaluate stage (``evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.schema import Section, setting


@dataclass
class EvaluateConfig(Section):
    """Held-out evaluation: perplexity, accuracy, macro-F1, samples; the gate is ``register``'s."""

    name = "evaluate"

    max_perplexity_batches: int = setting(50, "Test-split batches scored for perplexity.", ge=1)
    batch_size: int = setting(
        16, "Sequences per forward pass (perplexity and classification).", ge=1
    )
    sample_prompts: list[str] = setting(
        ["The king", "In the beginning", "She said that"], "Prompts the LM continues in the report."
    )
    sample_max_new_tokens: int = setting(40, "Tokens generated per sample.", ge=0)
    sample_temperature: float = setting(0.8, "Sampling temperature; 0: greedy.", ge=0)
    sample_seed: int = setting(0, "Seed of the samples.")
    compare_champion: bool = setting(
        True, "Load models:/NAME@champion and score it on the same split."
    )
    sft_max_pairs: int = setting(
        200, "finetune.task sft: held-out pairs scored (a greedy generation each); 0: all.", ge=0
    )
    sft_max_new_tokens: int = setting(
        32, "finetune.task sft: tokens generated per held-out prompt (greedy, stops at EOS).", ge=1
    )
    sft_samples: int = setting(5, "finetune.task sft: generated samples shown in the report.", ge=0)
