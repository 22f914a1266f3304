"""The data stages' processes never load torch or transformers: each DVC stage is a process of
its own, and importing torch alone costs more than a small stage's work (docs/benchmarks/
default_run.md). The CLI imports a step's module only when its subcommand runs, so the modules
of validate, augment and tokenize are what must stay free of them."""

from __future__ import annotations

import subprocess
import sys


def test_data_steps_import_neither_torch_nor_transformers():
    code = (
        "import sys; from lmforge import cli; "
        "import lmforge.data.validate, lmforge.data.augment, lmforge.data.tokenize; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
