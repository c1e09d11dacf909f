"""Load a causal LM and its tokenizer by name, on one device or straight onto several (device map).

    >>> model, tokenizer = load_model("demo")                 # the bundled demo model
    >>> model, tokenizer = load_model("path/or/hub-name", dtype="bfloat16", device="cuda")
    >>> model, tokenizer = load_model("zai-org/GLM-4.7", dtype="bfloat16", device_map="auto",
    ...                               max_memory={0: "130GiB", 1: "130GiB", "cpu": "500GiB"},
    ...                               offload_folder="/scratch/offload")

With `device_map`, transformers/accelerate place each weight on its device while reading the
checkpoint (never a full copy on the CPU first); layers that fit nowhere go to `offload_folder`
("disk"). Checkpoints without tokenizer files give `tokenizer=None` (calibrate them with token-id data).
"""

from __future__ import annotations

from pathlib import Path

from reapkit.errors import InvalidInput
from reapkit.model.demo import resolve_name

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def torch_dtype(dtype):
    """`"bfloat16"` -> `torch.bfloat16`; `"auto"` and dtypes unchanged."""
    import torch

    if isinstance(dtype, str) and dtype != "auto":
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise InvalidInput(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        return value
    return dtype


def parse_max_memory(text: str | None) -> dict | None:
    """`"0=70GiB,1=70GiB,cpu=200GiB"` -> `{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}` (accelerate's form)."""
    if not text:
        return None
    limits = {}
    for item in text.split(","):
        device, sep, amount = item.partition("=")
        device, amount = device.strip(), amount.strip()
        if not sep or not device or not amount:
            raise InvalidInput(
                f"cannot read --max-memory item {item!r}; write DEVICE=AMOUNT pairs, e.g. 0=70GiB,1=70GiB,cpu=200GiB"
            )
        limits[int(device) if device.isdigit() else device] = amount
    return limits


def load_model(
    name: str,
    *,
    dtype="auto",
    device: str = "cpu",
    device_map=None,
    max_memory: dict | None = None,
    offload_folder=None,
):
    """`(model, tokenizer or None)`, the model in eval mode; `name="demo"` is the bundled model.

    Without `device_map` the model lands on `device`. With `device_map` (`"auto"`, `"balanced"`,
    `"cpu"`, `"cuda:0"` or a `{module: device}` dict) `device` is ignored and the weights are
    loaded straight to their devices, limited by `max_memory`, spilling to `offload_folder`.
    """
    from transformers import AutoModelForCausalLM

    name = resolve_name(name)
    if device_map is None and (max_memory or offload_folder):
        raise InvalidInput(
            "max_memory and offload_folder place a model by device map; add device_map='auto' (--device-map auto)"
        )
    if device_map is None:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype(dtype)).to(device).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch_dtype(dtype), device_map=device_map, max_memory=max_memory, offload_folder=offload_folder
        ).eval()
    return model, load_tokenizer(name)


def load_tokenizer(name: str):
    """The tokenizer of model `name`, or None when its folder has no tokenizer files."""
    from transformers import AutoTokenizer

    name = resolve_name(name)
    local = Path(name)
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def input_device(model):
    """The device the model's token ids go to: where its input embeddings compute.

    For a device-mapped model whose embeddings are offloaded (weights on `meta`), the execution
    device accelerate gave them; the CPU when there is none.
    """
    import torch

    embeddings = model.get_input_embeddings()
    device = embeddings.weight.device
    if device.type != "meta":
        return device
    for module in (embeddings, model):
        hook = getattr(module, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    return torch.device("cpu")
