"""The bundled demo model: where it lives, and the one place the name "demo" is turned into that folder.

    >>> resolve_name("demo")                           # the folder of the bundled model
    '/.../data/demo'
    >>> resolve_name("Qwen/Qwen3-30B-A3B")             # any other name unchanged
    'Qwen/Qwen3-30B-A3B'
    >>> from reapkit.model.loading import load_model
    >>> model, tokenizer = load_model("demo")          # stock transformers, eval mode
    >>> type(model).__name__, model.config.num_experts, len(tokenizer)
    ('Qwen3MoeForCausalLM', 16, 3072)

A small Qwen3-MoE (4 layers, 16 experts, top-2) trained on the built-in domains of
:mod:`reapkit.data`; see data/demo/MODEL_CARD.md. ``scripts/train_demo.py`` trains it again.
``reapkit demo`` runs the notebooks on it.
"""

from __future__ import annotations

from pathlib import Path

from reapkit.errors import MissingInput

__all__ = ["DEMO", "DEMO_PATH", "TRAIN_COMMAND", "resolve_name"]

#: The model name that stands for the bundled demo model (on the command line and in notebook parameters).
DEMO = "demo"
DEMO_PATH = Path(__file__).resolve().parents[2] / "data" / "demo"

#: How to build the demo model when it is missing (run from the repository root).
TRAIN_COMMAND = "python scripts/train_demo.py train --out data/demo"


def resolve_name(name, *, must_exist: bool = True) -> str:
    """`"demo"` -> the bundled demo model's folder; any other name unchanged.

    With `must_exist`, a demo model that was never built is refused with the command that builds it.
    """
    if str(name) != DEMO:
        return str(name)
    if must_exist and not (DEMO_PATH / "config.json").is_file():
        raise MissingInput(f"the demo model is missing from {DEMO_PATH}; build it with `{TRAIN_COMMAND}`")
    return str(DEMO_PATH)
