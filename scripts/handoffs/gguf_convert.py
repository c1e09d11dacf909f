"""Run llama.cpp's `convert_hf_to_gguf.py` on a checkpoint whose tokenizer splits text as GPT-2 does.

    python gguf_convert.py LLAMA_CPP_DIR pruned --outfile pruned-f32.gguf --outtype f32

The converter recognises a BPE tokenizer's pre-tokenizer by the hash of how it splits a fixed text
and stops with "BPE pre-tokenizer was not recognized" for one it does not know, such as the demo
model's own small tokenizer. That tokenizer's pre-tokenizer is GPT-2's byte-level split
(`"pre_tokenizer": {"type": "ByteLevel", "use_regex": true}` in tokenizer.json), so this names it
`gpt-2` and runs the converter unchanged otherwise. Real Qwen3 models need no such step.
"""

import runpy
import sys
from pathlib import Path

root = Path(sys.argv.pop(1))
sys.path[:0] = [str(root), str(root / "gguf-py")]  # the converter's own package and its gguf-py

from conversion.base import TextModel  # noqa: E402

TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv[0] = str(root / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
