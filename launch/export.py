"""Export a checkpoint for use outside training: ``python -m launch.export CKPT_OR_RUN_DIR OUT_DIR``.

CKPT_OR_RUN_DIR is one checkpoint (``.../checkpoints/global_stepN``) or a run directory, whose newest complete
checkpoint is exported. OUT_DIR receives ``llm/`` (transformers ``from_pretrained`` + tokenizer.model),
``bridge/`` and ``vision/`` (safetensors + config.json) and ``lmm_export.json`` (see ``lmm/export.py``).
Exit 2 when the checkpoint's frozen weight files changed or one of its files pickles more than weights.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lmm import logs

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="checkpoint or run directory")
    parser.add_argument("out", type=Path, help="export directory")
    args = parser.parse_args(argv)

    from lmm.training.checkpoint import META_FILE, complete_checkpoints
    found = [args.target] if (args.target / META_FILE).is_file() else complete_checkpoints(args.target)
    if not found:
        print(f"error: no complete checkpoint (with {META_FILE}) under {args.target}", file=sys.stderr)
        return 2
    from lmm.export import export_checkpoint
    from lmm.safe_loading import UnsafeCheckpointError
    from lmm.training.frozen_weights import FrozenWeightsError
    try:
        marker = export_checkpoint(found[-1], args.out)
    except (FrozenWeightsError, UnsafeCheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("exported %s -> %s", found[-1], marker.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
