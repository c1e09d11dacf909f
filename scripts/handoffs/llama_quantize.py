"""Quantise GGUF files with llama.cpp's own quantiser (llama-cpp-python's binding; run by check_handoffs.py).

python llama_quantize.py request.json reply.json
# request: {"jobs": [{"model": "demo-f32.gguf", "out": "demo-q8_0.gguf", "type": "Q8_0"}, ...]}
# reply:   {"done": [{"out": "demo-q8_0.gguf", "rc": 0}, ...], "llama_cpp": "0.3.36"}

`pure` quantises every tensor to the one type (llama.cpp's mixes such as Q4_K_M pick types per
tensor from the layer count), so a file quantised before pruning and one quantised after agree.
"""

import json
import sys

import llama_cpp


def main(request_path: str, reply_path: str) -> None:
    request = json.loads(open(request_path).read())
    done = []
    for job in request["jobs"]:
        model, out, qtype = job["model"], job["out"], job["type"]
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
        params.pure = True
        params.nthread = 1
        rc = llama_cpp.llama_model_quantize(model.encode(), out.encode(), params)
        done.append({"out": out, "rc": int(rc)})
    with open(reply_path, "w") as f:
        json.dump({"done": done, "llama_cpp": llama_cpp.__version__}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
