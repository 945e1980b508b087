"""The CapsFusion fusion stage: ``lmm-fuse run`` writes a fused caption field for a manifest's samples.

  lmm-fuse run --manifest SHARDS/manifest.json --model FUSER_DIR --out FUSED/ [--field fused]
               [--raw-field raw] [--synthetic-field synthetic] [--batch-size 32] [--max-new-tokens 128]
               [--max-chars 1000] [--chat-template] [--backend auto|vllm|transformers] [--part I --num-parts N]
  lmm-fuse finish --out FUSED/
  torchrun --nproc_per_node N -m launch.fuse train --config FUSER.yaml [key=value ...]

FUSER_DIR is a local Hugging Face causal LM directory (an instruction model, or a fuser fine-tuned on
(raw, synthetic, fused) triplets) with its tokenizer. FUSED/ gets one keyed sidecar per shard and, once every shard
is done, ``manifest.json`` (the original shards plus the new field) and ``stats.json`` (rows, fused, skipped by
reason, per shard and in total); train on it with ``data.train_manifest=FUSED/ data.caption_source=fused``.
A re-run skips finished shards. ``--part`` / ``--num-parts`` default to the Slurm array task x rank
(``slurm/fuse.sh``); the process that finds every shard done writes the manifest, and ``finish`` does it later or
lists the shards still missing (exit 1). Exit 2 on a bad request. The work is done by ``lmm.fusion.run``.

``train`` fine-tunes a fuser on (raw, synthetic, fused) triplets through the project's training loop
(``lmm.fusion.training``; exit codes as ``launch.pretrain``): ``model.llm.pretrained`` is the base model,
``data.caption_source`` the fused field, ``fusion.raw_field`` / ``fusion.synthetic_field`` the inputs. When the
run reaches its last step, rank 0 writes ``<output_dir>/fuser/`` (adapters merged, tokenizer included): the
``--model`` of ``lmm-fuse run``.
"""
from __future__ import annotations

import argparse
import sys

from lmm import logs


def _run_parser(sub) -> None:
    from lmm.fusion.run import FuseSettings

    default = FuseSettings("", "", "")
    run = sub.add_parser("run", help="fuse the captions of a manifest's shards (this process's part of them)")
    run.add_argument("--manifest", required=True, help="input manifest.json (or its folder)")
    run.add_argument("--model", required=True, help="local Hugging Face causal LM directory")
    run.add_argument("--out", required=True, help="output folder (sidecars, manifest.json, stats.json)")
    run.add_argument("--field", default=default.field, help="name of the new caption field")
    run.add_argument("--raw-field", default=default.raw_field)
    run.add_argument("--synthetic-field", default=default.synthetic_field)
    run.add_argument("--batch-size", type=int, default=default.batch_size, help="prompts per generation call")
    run.add_argument("--max-new-tokens", type=int, default=default.max_new_tokens)
    run.add_argument("--max-chars", type=int, default=default.max_chars,
                     help="fused captions longer than this are cut at a word boundary")
    run.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    run.add_argument("--backend", default=default.backend, choices=("auto", "vllm", "transformers"))
    run.add_argument("--dtype", default=default.dtype, choices=("auto", "bf16", "fp16", "fp32"),
                     help="auto: bf16 on a GPU, fp32 on the CPU")
    run.add_argument("--part", type=int, help="this process's part of the shard list (default: from Slurm / torchrun)")
    run.add_argument("--num-parts", type=int, help="how many parts the shard list is cut into")


def run(args) -> int:
    from lmm.fusion.parts import part_from_env
    from lmm.fusion.run import FuseSettings, fuse_part

    if (args.part is None) != (args.num_parts is None):
        print("error: give --part and --num-parts together (or neither: from the environment)", file=sys.stderr)
        return 2
    index, parts = (args.part, args.num_parts) if args.part is not None else part_from_env()
    settings = FuseSettings(args.manifest, args.model, args.out, args.field, args.raw_field, args.synthetic_field,
                            args.max_new_tokens, args.max_chars, args.chat_template, args.batch_size, args.backend,
                            args.dtype)
    try:
        fuse_part(settings, index, parts)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def finish(args) -> int:
    from lmm.fusion.run import finish as finish_run

    try:
        missing = finish_run(args.out)
    except FileNotFoundError as err:
        print(f"error: {err} (is {args.out} the --out of an lmm-fuse run?)", file=sys.stderr)
        return 2
    for url in missing:
        print(f"missing: {url}", file=sys.stderr)
    return 1 if missing else 0


def train(args) -> int:
    from lmm.training.preemption import STOP

    STOP.install()  # first: Slurm's early-warning signal may come while the heavy imports still run
    from launch import pretrain
    from lmm import distributed
    from lmm.config import ConfigError, load_config, total_steps
    from lmm.fusion.training import FuserTask, export_fuser
    from lmm.training.checkpoint import latest_checkpoint, read_meta

    try:  # a fuser has no vision tower or bridge: their weights are never built
        config = load_config(args.config, ["model.allow_random_frozen=true", *args.overrides])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return pretrain.exit_through_launcher(pretrain.EXIT_BAD_CONFIG, "config error (see above)")
    code = pretrain.run(config, FuserTask())
    last = latest_checkpoint(config.output_dir)
    if code == 0 and distributed.detect_env().is_main and last and read_meta(last).step == total_steps(config):
        export_fuser(config)
    return code


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    parser = argparse.ArgumentParser(prog="lmm-fuse", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    finisher = sub.add_parser("finish", help="write the manifest once every shard is done, else list the missing")
    finisher.add_argument("--out", required=True, help="the output folder of lmm-fuse run")
    trainer = sub.add_parser("train", help="fine-tune a fuser on (raw, synthetic, fused) triplets (under torchrun)")
    trainer.add_argument("--config", required=True, help="YAML experiment config (model.llm.pretrained: base fuser)")
    trainer.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    trainer.add_argument("overrides", nargs="*", help="key.path=value overrides")
    args = parser.parse_args(argv)
    return {"run": run, "finish": finish, "train": train}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
