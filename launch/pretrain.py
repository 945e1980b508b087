"""Train one run: ``torchrun --nproc_per_node N -m launch.pretrain --config configs/demo.yaml key=value ...``."""
from __future__ import annotations

import argparse
import sys

from lmm.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML experiment config")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. data.caption_source=raw")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from lmm import distributed
    from lmm.training.trainer import train
    try:
        train(config)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
