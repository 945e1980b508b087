"""Before/after caption comparison: two models captioned on the same images under one protocol, side by side.

BEFORE and AFTER are each a DeepSpeed checkpoint or an exported model, loaded by ``load_eval_model``. The protocol
(prompt, decoding settings, batch size, precision, PTB tokenizer) is the AFTER run's saved ``eval`` section with
``eval.*`` overrides, and the eval set a Karpathy-format file and split; both models caption exactly the same images
under it, one model in memory at a time. Each is scored with ``score_with_per_image`` (pycocoevalcap's metrics);
CIDEr and ROUGE-L get each model's bootstrap interval and a paired interval of the difference (after - before,
``lmm.eval.bootstrap``), and the change counts as beyond resampling noise when that interval excludes 0. The result
goes to ``compare.json`` (all numbers and captions) and ``compare.md`` (a metric table, x100 as papers show it, and
a caption table of a few images: sampled with a fixed seed, or chosen by id).
"""
from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipeline.files import write_json_atomic
from lmm.config import ConfigError, EvalConfig
from lmm.eval.benchmarks import Benchmark, EvalImage
from lmm.eval.bootstrap import INTERVAL_METRICS, LEVEL, paired_difference_interval, uncertainty_fields
from lmm.eval.captioning import eval_device_and_dtype, generate_captions
from lmm.eval.evaluation import BenchmarkTarget, load_images, prepare_model, protocol, protocol_digest
from lmm.eval.evaluator import eval_config_for
from lmm.eval.loading import EXPORT_MARKER, check_loadable, is_loadable, load_eval_model
from lmm.eval.scoring import score_with_per_image
from lmm.training.checkpoint import META_FILE

log = logging.getLogger(__name__)

LABELS = ("before", "after")
DEFAULT_SHOW = 10
SHOW_SEED = 0  # which images the caption table shows, when not chosen by id
IDENTITY_FIELDS = ("run_name", "caption_source", "num_samples", "step", "samples_seen", "config_digest")
METRIC_ORDER = ("CIDEr", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L")
JSON_FILE, MARKDOWN_FILE = "compare.json", "compare.md"


@dataclass(frozen=True)
class ComparisonPlan:
    """What to compare, checked before any weight is read."""
    models: dict[str, Path]  # label -> checkpoint or export
    eval_config: EvalConfig
    target: BenchmarkTarget
    images: list[EvalImage]  # all images scored
    shown: list[EvalImage]  # the caption table's images


def plan_comparison(before: Path, after: Path, overrides: list[str], dataset_json: str | None = None,
                    image_root: str | None = None, split: str = "test", max_images: int | None = None,
                    show: int = DEFAULT_SHOW, image_ids: list[str] | None = None) -> ComparisonPlan:
    """The plan; the eval set defaults to the AFTER run's ``eval.dataset_json`` and ``eval.image_root``. Raises
    ConfigError, FileNotFoundError or ValueError on a bad request."""
    models = {"before": Path(before), "after": Path(after)}
    for label, path in models.items():
        if not is_loadable(path):
            raise FileNotFoundError(f"{label} model {path} is neither a complete checkpoint (<run>/checkpoints/"
                                    f"global_stepN with {META_FILE}) nor an exported model ({EXPORT_MARKER})")
    eval_config = eval_config_for(models["after"], overrides)
    if dataset_json and not image_root:
        raise ConfigError("--dataset-json needs --image-root (the folder its file paths are relative to)")
    dataset_json, image_root = (dataset_json, image_root) if dataset_json else \
        (eval_config.dataset_json, eval_config.image_root)
    if not dataset_json:
        raise ConfigError(f"no eval set: give --dataset-json and --image-root (the run of {after} has no "
                          f"eval.dataset_json)")
    eval_config = dataclasses.replace(eval_config, dataset_json=str(dataset_json), image_root=str(image_root),
                                      split=split, max_images=max_images or eval_config.max_images)
    name = f"{Path(dataset_json).stem}:{split}"
    target = BenchmarkTarget(Benchmark(name, "karpathy", split, Path(dataset_json).name), str(dataset_json),
                             str(image_root))
    images = load_images(target, eval_config.max_images)
    shown = shown_images(images, show, image_ids)
    for path in models.values():
        check_loadable(path)
    return ComparisonPlan(models, eval_config, target, images, shown)


def shown_images(images: list[EvalImage], show: int, image_ids: list[str] | None = None) -> list[EvalImage]:
    """The caption table's images: ``image_ids`` in the given order, else ``show`` sampled with a fixed seed (in
    eval order); ValueError for an id that is not among ``images``."""
    if image_ids:
        by_id = {str(img.image_id): img for img in images}
        unknown = [i for i in image_ids if i not in by_id]
        if unknown:
            raise ValueError(f"image id(s) {', '.join(unknown)} not among the {len(images)} compared images")
        return [by_id[i] for i in image_ids]
    picks = np.random.default_rng(SHOW_SEED).choice(len(images), size=min(show, len(images)), replace=False)
    return [images[i] for i in sorted(picks)]


def caption_with(path: Path, label: str, plan: ComparisonPlan) -> tuple[dict, dict]:
    """(identity, image id -> caption) of the model at ``path``; the model is freed before returning."""
    _, dtype = eval_device_and_dtype(plan.eval_config)
    loaded = prepare_model(load_eval_model(path, dtype), plan.eval_config)
    meta = loaded.meta
    log.info("%s: captioning %d images with %s (step %d)", label, len(plan.images), path, meta.step)
    captions = generate_captions(loaded.model, loaded.tokenizer, plan.images, plan.eval_config,
                                 desc=f"{label}: {meta.run_name} step {meta.step}")
    identity = {"path": str(path.resolve()), **{key: getattr(meta, key) for key in IDENTITY_FIELDS}}
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return identity, captions


def run_comparison(plan: ComparisonPlan) -> dict:
    """Caption with both models, score both, and return the comparison (``compare.json``'s content)."""
    identities, captions = {}, {}
    for label in LABELS:
        identities[label], captions[label] = caption_with(plan.models[label], label, plan)
    return comparison_result(plan, identities, captions)


def comparison_result(plan: ComparisonPlan, identities: dict, captions: dict) -> dict:
    """Metrics, intervals and table rows from both models' captions of ``plan.images``."""
    config = plan.eval_config
    references = {img.image_id: img.references for img in plan.images}
    metrics, uncertainty, per_image = {}, {}, {}
    for label in LABELS:
        metrics[label], per_image[label] = score_with_per_image(references, captions[label], config.tokenizer,
                                                                config.meteor)
        uncertainty[label] = uncertainty_fields(per_image[label])
    metrics["delta"] = {key: metrics["after"][key] - metrics["before"][key]
                        for key in metrics["after"] if key != "num_images"}
    delta_intervals = {m: list(paired_difference_interval(per_image["before"][m], per_image["after"][m]))
                       for m in INTERVAL_METRICS}
    device, dtype = eval_device_and_dtype(config)
    proto = protocol(config, plan.target)
    return {
        "models": identities,
        "eval_set": {"name": plan.target.benchmark.name, "dataset_json": plan.target.annotations,
                     "image_root": plan.target.image_root, "split": plan.target.benchmark.split,
                     "num_images": len(plan.images)},
        "protocol": {**proto, "batch_size": config.batch_size, "device": device.type,
                     "dtype": str(dtype).removeprefix("torch."), "same_for_both": True},
        "protocol_digest": protocol_digest(proto),
        "metrics": metrics,
        "intervals": {"level": LEVEL, **{label: uncertainty[label]["intervals"] for label in LABELS},
                      "delta": delta_intervals},
        "delta_beyond_interval": {m: low > 0 or high < 0 for m, (low, high) in delta_intervals.items()},
        "per_image": {label: uncertainty[label]["per_image"] for label in LABELS},
        "rows": [{"image_id": img.image_id, "ground_truth": img.references[0],
                  "before": captions["before"][img.image_id], "after": captions["after"][img.image_id]}
                 for img in plan.shown],
        "captions": [{"image_id": img.image_id, "before": captions["before"][img.image_id],
                      "after": captions["after"][img.image_id]} for img in plan.images],
    }


def escape_cell(text) -> str:
    """``text`` as one markdown table cell: ``|`` escaped, line breaks as spaces."""
    return " ".join(str(text).split("\n")).replace("\\", "\\\\").replace("|", "\\|")


def caption_table(rows: list[dict]) -> str:
    lines = ["| image id | ground truth | caption before | caption after |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(escape_cell(row[key]) for key in ("image_id", "ground_truth", "before", "after"))
              + " |" for row in rows]
    return "\n".join(lines)


def metric_table(result: dict) -> str:
    """metric | before | after | delta, x100, with the intervals where there are any."""
    def cell(value: float, interval=None, sign: str = "") -> str:
        text = f"{100 * value:{sign}.2f}"
        return text + (f" [{100 * interval[0]:{sign}.2f}, {100 * interval[1]:{sign}.2f}]" if interval else "")

    metrics, intervals = result["metrics"], result["intervals"]
    lines = ["| metric | before | after | delta (after - before) |", "| --- | ---: | ---: | ---: |"]
    for name in (m for m in METRIC_ORDER if m in metrics["delta"]):
        lines.append(f"| {name} | {cell(metrics['before'][name], intervals['before'].get(name))} | "
                     f"{cell(metrics['after'][name], intervals['after'].get(name))} | "
                     f"{cell(metrics['delta'][name], intervals['delta'].get(name), '+')} |")
    return "\n".join(lines)


def verdict(result: dict, metric: str = "CIDEr") -> str:
    """One sentence: is the change of ``metric`` beyond its paired interval?"""
    low, high = result["intervals"]["delta"][metric]
    delta, level = 100 * result["metrics"]["delta"][metric], round(100 * result["intervals"]["level"])
    where = ("excludes 0: the change is beyond the interval, more than which images were drawn explains"
             if result["delta_beyond_interval"][metric] else
             "includes 0: the change is within the interval, not told apart from which images were drawn")
    return (f"{metric} change {delta:+.2f} (x100); its {level}% paired bootstrap interval over the "
            f"{result['eval_set']['num_images']} images, [{100 * low:+.2f}, {100 * high:+.2f}], {where}.")


def header(result: dict) -> list[str]:
    """The models, the eval set and the protocol, as markdown list items."""
    proto, eval_set = result["protocol"], result["eval_set"]
    lines = [f"- **{label}**: `{m['path']}` (run {m['run_name']}, step {m['step']}, {m['samples_seen']} samples "
             f"seen)" for label, m in result["models"].items()]
    lines.append(f"- **eval set**: {eval_set['num_images']} images of split `{eval_set['split']}` of "
                 f"`{eval_set['dataset_json']}`, the same images for both models")
    lines.append(f"- **protocol** (the same for both, digest `{result['protocol_digest']}`): prompt "
                 f"`{proto['prompt']!r}`, {proto['num_beams']} beam(s), {proto['min_new_tokens']} to "
                 f"{proto['max_new_tokens']} new tokens, length penalty {proto['length_penalty']}, batch size "
                 f"{proto['batch_size']}, {proto['dtype']} on {proto['device']}, captions: {proto['postprocess']}; "
                 f"PTB tokenizer {proto['tokenizer']}")
    return lines


def render_markdown(result: dict) -> str:
    """``compare.md``: models, eval set and protocol, metric table, verdict, caption table."""
    level = round(100 * result["intervals"]["level"])
    return "\n".join([
        "# Caption comparison: before vs after", "", *header(result), "",
        f"## Metrics (x100; {level}% bootstrap intervals over images, paired for the delta)", "",
        metric_table(result), "", verdict(result), "",
        f"## Captions ({len(result['rows'])} of {result['eval_set']['num_images']} images)", "",
        caption_table(result["rows"]), ""])


def write_comparison(result: dict, out_dir: Path) -> str:
    """Write ``compare.json`` and ``compare.md`` under ``out_dir``; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / JSON_FILE, result, sort_keys=False)
    markdown = render_markdown(result)
    (out_dir / MARKDOWN_FILE).write_text(markdown)
    return markdown
