"""The bundled demo model: where it lives. Load it with `load_model("demo")`.

    >>> from reapkit.model.loading import load_model
    >>> model, tokenizer = load_model("demo")          # stock transformers, eval mode
    >>> type(model).__name__, model.config.num_experts, len(tokenizer)
    ('Qwen3MoeForCausalLM', 16, 3072)

A small Qwen3-MoE (4 layers, 16 experts, top-2) trained on the built-in domains of
:mod:`reapkit.data`; see data/demo/MODEL_CARD.md. ``scripts/train_demo.py`` trains it again.
"""

from pathlib import Path

__all__ = ["DEMO_PATH", "TRAIN_COMMAND"]

DEMO_PATH = Path(__file__).resolve().parents[2] / "data" / "demo"

#: How to build the demo model when it is missing (run from the repository root).
TRAIN_COMMAND = "python scripts/train_demo.py train --out data/demo"
