"""Load a causal LM and its tokenizer by name.

    >>> model, tokenizer = load_model("demo")                 # the bundled demo model
    >>> model, tokenizer = load_model("path/or/hub-name", dtype="bfloat16", device="cuda")

Checkpoints without tokenizer files give `tokenizer=None` (calibrate them with token-id data).
"""
from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_model(name: str, *, dtype="auto", device: str = "cpu"):
    """`(model, tokenizer or None)`, the model in eval mode on `device`; `name="demo"` is the bundled model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if str(name) == "demo":
        from .demo import DEMO_PATH, TRAIN_COMMAND

        name = str(DEMO_PATH)
        if not (DEMO_PATH / "config.json").is_file():
            raise FileNotFoundError(f"the demo model is missing from {DEMO_PATH}; build it with `{TRAIN_COMMAND}`")
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype).to(device).eval()
    local = Path(name)
    tokenizer = None
    if not local.is_dir() or any((local / f).is_file() for f in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError, TypeError, KeyError):
            tokenizer = None
    return model, tokenizer
