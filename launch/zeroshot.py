"""Zero-shot classification with the vision tower's own CLIP: does a pretrained EVA-CLIP file behave as published?

  python -m launch.zeroshot --config configs/eva-g.yaml --cifar10 /data/cifar-10-batches-py [--split test]
  python -m launch.zeroshot --model EVA01-g-14 --pretrained /weights/EVA01-g-14/open_clip_pytorch_model.bin \\
                            --image-folder /data/my_labelled_images [--templates openai] [--json out.json]

Image and text towers come from the same file (``model.vision.pretrained`` of ``--config``, or ``--pretrained``),
the image trunk loaded as training loads it. Prints top-1, top-5 (with 5 classes or more) and per-class accuracy;
a "WARNING" line when top-1 is below 1.5x chance: the file's weights may be mis-mapped or untrained. The work is
``lmm.eval.zeroshot``'s. Exit 0 with results (warning or not), 2 on a bad request or an unreadable / unsafe file.
"""
from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path

from lmm import logs
from lmm.config import ConfigError
from lmm.eval.zeroshot import TEMPLATES

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="a run config: model.vision.name and model.vision.pretrained")
    parser.add_argument("--model", help="open_clip model name (default: the config's model.vision.name)")
    parser.add_argument("--pretrained", type=Path,
                        help="the whole CLIP file, image and text towers (default: model.vision.pretrained)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--cifar10", type=Path, help="CIFAR-10's python batches (cifar-10-batches-py)")
    data.add_argument("--image-folder", type=Path, help="root/<class>/<image> (class = folder name)")
    parser.add_argument("--split", choices=["test", "train"], default="test", help="CIFAR-10 split")
    parser.add_argument("--templates", choices=TEMPLATES, default="simple", help="open_clip's prompt templates")
    parser.add_argument("--max-images", type=int, help="classify only the first N images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.max_images is not None and args.max_images < 1):
        parser.error("--batch-size and --max-images must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    args = parse_args(argv)
    from lmm.eval.zeroshot import zero_shot
    from lmm.models.weights import WeightsMismatchError

    try:
        name, pretrained = args.model, args.pretrained
        if args.config is not None:
            from lmm.config import load_config
            vision = load_config(args.config).model.vision
            name, pretrained = name or vision.name, pretrained or vision.pretrained
        if not name or not pretrained:
            raise ValueError("give --model and --pretrained, or a --config whose model.vision.pretrained is set")
        result = zero_shot(name, pretrained, cifar10=args.cifar10, image_folder_dir=args.image_folder,
                           split=args.split, templates=args.templates, batch_size=args.batch_size,
                           max_images=args.max_images, device=args.device)
    except (FileNotFoundError, ValueError, ConfigError, WeightsMismatchError, pickle.UnpicklingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.report(), flush=True)
    if args.json is not None:
        result.write_json(args.json)
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
