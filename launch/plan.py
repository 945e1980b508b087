"""Plan a run before submitting it:
``lmm-plan --config configs/capsfusion_10m.yaml --nodes 8 --gpus-per-node 8 --gpu-mem-gb 80 [key=value ...]``.

Builds the full-size model on the meta device (no weights, no GPU), counts trainable and frozen parameters,
estimates per-GPU memory for ZeRO stages 0-3 with and without gradient checkpointing, and picks the largest
micro-batch that fits with the accumulation that reaches the global batch exactly. Exit 2 if the run cannot fit.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lmm.config import ConfigError, check_world_size, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML experiment config")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory of one GPU (GiB)")
    parser.add_argument("--headroom-gb", type=float, default=4.0,
                        help="reserved per GPU for CUDA context, NCCL/DeepSpeed buffers, fragmentation")
    parser.add_argument("--json", dest="json_out", help="also write the plan as JSON to this file")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, as for launch.pretrain")
    args = parser.parse_args(argv)

    from lmm.planning import PlanError, format_plan, make_plan
    try:
        config = load_config(args.config, args.overrides)  # also checks the manifest's caption fields
        if args.nodes >= 1 and args.gpus_per_node >= 1:  # else make_plan says what is wrong
            # before the meta model is built; micro-batch 1: the planner picks the micro-batch itself
            check_world_size(config, args.nodes * args.gpus_per_node, micro_batch_size=1)
        plan = make_plan(config, args.nodes, args.gpus_per_node, args.gpu_mem_gb, args.headroom_gb,
                         config_name=args.config)
    except (ConfigError, PlanError, FileNotFoundError, ValueError) as err:
        print(f"plan refused: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({**dataclasses.asdict(plan), "overrides": plan.overrides}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
