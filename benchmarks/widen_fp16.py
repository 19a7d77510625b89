"""A GPU lease carries at most 64 MiB, so all-MiniLM-L6-v2's weights (91 MB in float32) travel as float16.

    python benchmarks/widen_fp16.py narrow MODEL_DIR OUT_DIR   # here: OUT_DIR/model.fp16.safetensors + the small files
    python benchmarks/widen_fp16.py widen MODEL_DIR            # there: model.safetensors (float32) from the float16 one

The float16 copy rounds every weight (a relative error of at most 2^-11 where |w| >= 6.1e-5, float16's smallest
normal number; smaller weights keep less); a run from it is a float32 run from weights that differ from the real ones
in their last bits: what the GPU scripts report is said to be such a run.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def convert(src: Path, dst: Path, dtype) -> None:
    tensors = load_file(str(src))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, str(dst))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "narrow":
        src, out = Path(argv[1]), Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():                      # config, tokenizer and vocabulary files as they are
            if f.is_file() and f.suffix in (".json", ".txt"):
                shutil.copyfile(f, out / f.name)
        convert(src / "model.safetensors", out / "model.fp16.safetensors", torch.float16)
        return 0
    if len(argv) == 2 and argv[0] == "widen":
        d = Path(argv[1])
        if not (d / "model.safetensors").exists():
            convert(d / "model.fp16.safetensors", d / "model.safetensors", torch.float32)
        return 0
    print("usage: widen_fp16.py narrow MODEL_DIR OUT_DIR | widen MODEL_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
