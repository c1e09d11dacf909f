"""AutoRound W4A16 of a pruned checkpoint on CPU, then reload and generate (run in the auto-round environment).

python autoround_w4a16.py request.json reply.json
# request: {"model": "pruned", "out": "pruned-w4a16", "texts": ["calibration text", ...], "prompts": [[ids]]}
# reply:   quantised layer counts, sizes, generated tokens, agreement with the unquantised model
"""

import json
import sys
import time
from pathlib import Path

import auto_round
import torch
from auto_round import AutoRound
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

ITERS, NSAMPLES, SEQLEN = 20, 16, 64
KEYS = ("quant_method", "packing_format", "bits", "group_size", "sym", "data_type")


def quantise(model: str, out: str, texts: list[str]) -> Path:
    """Quantise `model` into a folder under `out` (AutoRound names it `<model>-w4g128`); return that folder."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    autoround = AutoRound(
        model,
        tokenizer=tokenizer,
        scheme="W4A16",
        dataset=texts,
        iters=ITERS,
        nsamples=NSAMPLES,
        seqlen=SEQLEN,
        batch_size=4,
        device_map="cpu",
    )
    autoround.quantize_and_save(out, format="auto_round")
    return next(path.parent for path in Path(out).rglob("config.json"))


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def main(request_path: str, reply_path: str) -> None:
    request = json.loads(open(request_path).read())
    started = time.time()
    out = quantise(request["model"], request["out"], request["texts"])
    seconds = time.time() - started
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    names = []
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            names += [k for k in f.keys() if k.endswith(".qweight")]
    quantised = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32).eval()
    source = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32).eval()
    agree, diffs, generated = [], [], 0
    with torch.no_grad():
        for ids in request["prompts"]:
            prompt = torch.tensor([ids])
            seq = quantised.generate(prompt, max_new_tokens=8, do_sample=False)
            new = seq[0, len(ids) :]
            generated += len(new)
            logits_q = quantised(seq).logits[0, len(ids) - 1 : -1].float()
            logits_s = source(seq).logits[0, len(ids) - 1 : -1].float()
            agree += (logits_s.argmax(-1) == new).tolist()
            lq, ls = torch.log_softmax(logits_q, -1), torch.log_softmax(logits_s, -1)
            diffs += (lq.gather(1, new[:, None]) - ls.gather(1, new[:, None])).abs().flatten().tolist()
    reply = {
        "auto_round": auto_round.__version__,
        "folder": str(out),
        "iters": ITERS,
        "nsamples": NSAMPLES,
        "seqlen": SEQLEN,
        "seconds": seconds,
        "quantised_linear": len(names),
        "quantised_experts": sum(".experts." in n for n in names),
        "quantization_config": {k: config[k] for k in KEYS if k in config},
        "size_mb": size_mb(out),
        "source_size_mb": size_mb(Path(request["model"])),
        "layer_class": type(quantised.model.layers[0].self_attn.q_proj).__module__,
        "dtype": str(quantised.dtype),
        "generated_tokens": generated,
        "agreement": sum(agree) / len(agree),
        "mean_abs_diff": sum(diffs) / len(diffs),
    }
    with open(reply_path, "w") as f:
        json.dump(reply, f, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
