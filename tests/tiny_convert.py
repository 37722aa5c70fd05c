"""Run llama.cpp's pinned converter (convert_hf_to_gguf.py) on a tiny random test model.

The tiny models share one small byte-fallback tokenizer (tiny_models.tiny_tokenizer). Real
models' converters check their tokenizer against a list of known ones (a hash of how it
splits a test text) and refuse any other; the test tokenizer is in no such list. So every
architecture's vocabulary is written the way the llama converter writes this tokenizer
(`_set_vocab_llama_hf`); the weights, the hyperparameters and the tensor names are each
architecture's own converter's. Usage: tiny_convert.py CONVERTER_DIR HF_DIR OUTFILE [CONVERTER_ARGS...]
"""

import runpy
import sys

converter_dir, hf_dir, outfile, *extra = sys.argv[1:]
sys.path.insert(0, converter_dir)
import conversion  # noqa: E402
from conversion.base import TextModel  # noqa: E402


def _tiny_vocab(self) -> None:
    self._set_vocab_llama_hf()


def _patch(cls: type) -> None:
    if "set_vocab" in cls.__dict__:
        cls.set_vocab = _tiny_vocab
    for sub in cls.__subclasses__():
        _patch(sub)


conversion.load_all_models()  # import every architecture's class, to patch it
_patch(TextModel)
TextModel.set_vocab = _tiny_vocab
sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", outfile, "--outtype", "f32", *extra]
runpy.run_path(f"{converter_dir}/convert_hf_to_gguf.py", run_name="__main__")
