"""Greedy tokens and log-probs from llama.cpp (llama-cpp-python) on a GGUF file (run by check_handoffs.py).

python llama_greedy.py request.json reply.json
# request: {"model": "pruned-f32.gguf", "prompts": [[token ids], ...], "max_tokens": 8}
# reply:   {"outputs": [{"tokens": [...], "logprobs": [...], "prompt_logprobs": [...]}], "llama_cpp": "0.3.36"}
"""

import json
import sys

import llama_cpp
import llama_cpp.llama_cpp as low_level
import numpy as np
from llama_cpp import Llama

_default_model_params = low_level.llama_model_default_params


def model_params():
    """llama.cpp's defaults without weight repacking: its AMX repacking of Q8_0 crashed (segfault) on this
    machine's CPU (AMX_INT8), for llama.cpp's own quantised files as well; it changes no result."""
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


low_level.llama_model_default_params = model_params  # what Llama() builds its model parameters from


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def main(request_path: str, reply_path: str) -> None:
    request = json.loads(open(request_path).read())
    model, max_tokens, prompts = request["model"], request["max_tokens"], request["prompts"]
    f32 = llama_cpp.GGML_TYPE_F32  # the KV cache in float32 too (its default is float16)
    llm = Llama(model_path=model, n_ctx=512, logits_all=True, n_threads=1, type_k=f32, type_v=f32, verbose=False)
    outputs = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        prompt_lp = log_softmax(llm.scores[: len(ids) - 1])
        tokens, logprobs = [], []
        for _ in range(max_tokens):
            last = log_softmax(llm.scores[llm.n_tokens - 1])
            token = int(last.argmax())
            tokens.append(token)
            logprobs.append(float(last[token]))
            llm.eval([token])
        outputs.append(
            {
                "tokens": tokens,
                "logprobs": logprobs,
                "prompt_logprobs": [float(prompt_lp[i - 1, ids[i]]) for i in range(1, len(ids))],
            }
        )
    with open(reply_path, "w") as f:
        json.dump({"outputs": outputs, "llama_cpp": llama_cpp.__version__}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
