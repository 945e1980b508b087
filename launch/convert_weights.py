"""Convert pretrained weights once to the training dtype, so every run memory-maps them instead of converting.

    python -m launch.convert_weights llm /weights/Llama-2-7b-hf /weights/Llama-2-7b-hf-bf16 [--dtype bf16]
    python -m launch.convert_weights vision /weights/EVA01-g-14/open_clip_pytorch_model.bin \\
        /weights/EVA01-g-14/open_clip_model-bf16.safetensors [--dtype bf16]

The conversions are ``lmm.models.weight_conversion``'s.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmm.models.weight_conversion import DTYPES, convert_llm_dir, convert_open_clip_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["llm", "vision"])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args(argv)
    convert = convert_llm_dir if args.kind == "llm" else convert_open_clip_file
    try:
        out = convert(args.src, args.dst, DTYPES[args.dtype])
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
