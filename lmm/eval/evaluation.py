"""One checkpoint on one benchmark -> one result record: generate (all ranks), score (rank 0), describe.

The record holds the run's identity (run name, caption source, target sample count, step, samples seen, config
hash), the benchmark, the metrics with 95% bootstrap intervals over images (``intervals``) and CIDEr per image
(``per_image``, in image order), the checkpoint path and the protocol (prompt, decoding settings,
post-processing, tokenizer, precision), because CIDEr moves by tens of points with the prompt alone.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmm.config import ConfigError, EvalConfig
from lmm.eval.benchmarks import BENCHMARKS, Benchmark, EvalImage, load_benchmark, missing_images
from lmm.eval.bootstrap import uncertainty_fields
from lmm.eval.captioning import POSTPROCESS, eval_device_and_dtype, generate_captions
from lmm.eval.loading import EvalModel
from lmm.eval.ptb_tokenizer import resolve_backend
from lmm.eval.scoring import score_captions, score_with_per_image

NUM_EXAMPLES = 5


@dataclass(frozen=True)
class BenchmarkTarget:
    """A benchmark and where its files are."""
    benchmark: Benchmark
    annotations: str
    image_root: str


def resolve_benchmarks(eval_config: EvalConfig, names: list[str] | None = None) -> list[BenchmarkTarget]:
    """The benchmarks to run: ``names`` (keys of ``BENCHMARKS`` with files in ``eval.benchmarks.<key>``, or the
    run's own eval set by its name), else the run's own eval set (``eval.dataset_json``, Karpathy format), else
    every benchmark configured in ``eval.benchmarks``."""
    unknown = sorted(set(eval_config.benchmarks) - set(BENCHMARKS))
    if unknown:
        raise ConfigError(f"config key 'eval.benchmarks': unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    available = {key: BenchmarkTarget(BENCHMARKS[key], files.annotations, files.image_root)
                 for key, files in eval_config.benchmarks.items()}
    own_key = None
    if eval_config.dataset_json:
        own_key = next((key for key, b in BENCHMARKS.items() if eval_config.benchmark in (key, b.name)),
                       eval_config.benchmark)
        spec = BENCHMARKS.get(own_key) or Benchmark(eval_config.benchmark, "karpathy", eval_config.split,
                                                    Path(eval_config.dataset_json).name)
        available.setdefault(own_key, BenchmarkTarget(spec, eval_config.dataset_json, eval_config.image_root))
    if not names:
        names = [own_key] if own_key else list(available)
    if not names:
        raise ConfigError("nothing to evaluate on: set eval.dataset_json (Karpathy format) or "
                          "eval.benchmarks.<coco|nocaps|flickr30k>.annotations/image_root")
    targets = []
    for name in names:
        if name in available and available[name].annotations:
            targets.append(available[name])
        elif name in BENCHMARKS:
            raise ConfigError(f"benchmark '{name}' needs eval.benchmarks.{name}.annotations=<path to "
                              f"{BENCHMARKS[name].standard_file}> and eval.benchmarks.{name}.image_root=<dir>")
        else:
            raise ConfigError(f"unknown benchmark '{name}'; known: {sorted(BENCHMARKS)}")
    return targets


def protocol(eval_config: EvalConfig, target: BenchmarkTarget) -> dict:
    """Everything that can change the score, stored with the result (paths and batch size cannot)."""
    return {"prompt": eval_config.prompt, "num_beams": eval_config.num_beams,
            "max_new_tokens": eval_config.max_new_tokens, "min_new_tokens": eval_config.min_new_tokens,
            "length_penalty": eval_config.length_penalty, "postprocess": POSTPROCESS,
            "split": target.benchmark.split, "max_images": eval_config.max_images,
            "precision": eval_config.precision, "tokenizer": resolve_backend(eval_config.tokenizer),
            "meteor": eval_config.meteor}


def protocol_digest(proto: dict) -> str:
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:12]


def load_images(target: BenchmarkTarget, max_images: int | None) -> list[EvalImage]:
    images = load_benchmark(target.benchmark, target.annotations, target.image_root, max_images)
    missing = missing_images(images)
    if missing:
        raise FileNotFoundError(f"benchmark {target.benchmark.name}: {len(missing)} of {len(images)} images are "
                                f"missing under {target.image_root}, e.g. {missing[0]}")
    return images


def evaluate_benchmark(loaded: EvalModel, eval_config: EvalConfig, target: BenchmarkTarget, rank: int = 0,
                       world_size: int = 1) -> dict | None:
    """Generate on every rank; rank 0 scores and returns the record, other ranks return None."""
    start = time.time()
    images = load_images(target, eval_config.max_images)
    name = target.benchmark.name
    captions = generate_captions(loaded.model, loaded.tokenizer, images, eval_config, rank, world_size,
                                 desc=f"{loaded.meta.run_name} step {loaded.meta.step} {name}")
    if rank != 0:
        return None
    references = {img.image_id: img.references for img in images}
    metrics, per_image = score_with_per_image(references, captions, eval_config.tokenizer, eval_config.meteor)
    for domain in sorted({img.domain for img in images if img.domain}):  # NoCaps reports each domain too
        subset = [img for img in images if img.domain == domain]
        metrics[f"{domain}/CIDEr"] = score_captions({img.image_id: img.references for img in subset},
                                                    {img.image_id: captions[img.image_id] for img in subset},
                                                    eval_config.tokenizer, with_meteor=False)["CIDEr"]
    proto = protocol(eval_config, target)
    return {**asdict(loaded.meta), "benchmark": name, "checkpoint": str(loaded.path.resolve()),
            "metrics": metrics, **uncertainty_fields(per_image), "protocol": proto,
            "protocol_digest": protocol_digest(proto),
            "examples": [{"image_id": img.image_id, "caption": captions[img.image_id],
                          "references": img.references[:2]} for img in images[:NUM_EXAMPLES]],
            "eval_world_size": world_size, "eval_seconds": round(time.time() - start, 2),
            "eval_device": str(next(loaded.model.parameters()).device),
            "eval_dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
            "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def prepare_model(loaded: EvalModel, eval_config: EvalConfig, local_rank: int = 0) -> EvalModel:
    """Move the model to this rank's device in the eval precision."""
    device, dtype = eval_device_and_dtype(eval_config, local_rank)
    loaded.model.to(device=device, dtype=dtype)
    return loaded
