"""Config of the decoder's shape (``model``). Presets, not code, decide model sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmforge.config.schema import Section, setting

PRESETS_FILE = Path(__file__).resolve().parent.parent / "presets" / "models.yaml"


def load_presets() -> dict[str, dict[str, Any]]:
    with PRESETS_FILE.open() as fh:
        return yaml.safe_load(fh)


@dataclass
class ModelConfig(Section):
    """A Llama-style decoder (RMSNorm, RoPE, SwiGLU, SDPA). ``preset`` fills the shape."""

    name = "model"

    preset: str = setting(
        "cpu-tiny",
        "Shape preset from src/lmforge/presets/models.yaml; keys set next to it override it.",
    )
    n_layers: int = setting(4, "Decoder blocks.", ge=1)
    d_model: int = setting(256, "Hidden width.", ge=1)
    n_heads: int = setting(4, "Attention heads; must divide d_model.", ge=1)
    n_kv_heads: int | None = setting(
        None, "Key/value heads: null for multi-head attention; fewer for grouped-query.", ge=1
    )
    d_ff: int | None = setting(
        None, "SwiGLU hidden width; null: about 8/3 * d_model, rounded to 64.", ge=1
    )
    max_seq_len: int = setting(256, "Longest context the model is built for (RoPE).", ge=2)
    vocab_size: int | None = setting(None, "Null: taken from the trained tokenizer.", ge=1)
    rope_theta: float = setting(10000.0, "RoPE base frequency.", gt=0)
    sliding_window: int | None = setting(
        None, "Local attention window in tokens; null: global attention.", ge=1
    )
    dropout: float = setting(0.0, "Dropout on attention weights.", ge=0, lt=1)
    tie_embeddings: bool = setting(True, "The output projection shares the input embedding.")
    init_std: float = setting(0.02, "Standard deviation of the initial weights.", gt=0)

    def check(self) -> None:
        if self.d_model % self.n_heads:
            self.fail("n_heads", f"{self.n_heads} must divide model.d_model {self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            width = self.d_model // self.n_heads
            self.fail("n_heads", f"head width d_model/n_heads = {width} must be even (RoPE)")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            self.fail("n_kv_heads", f"{self.n_kv_heads} must divide model.n_heads {self.n_heads}")
