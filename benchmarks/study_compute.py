"""Study compute: the same scaling study (3 budgets) as separate cosine runs and as one WSD main run plus decay
branches, side by side in one run, on the toy world.

    PYTHONPATH=. python benchmarks/study_compute.py [--out /tmp/study_compute] [--schedules cosine,wsd[,wsd-s]]
                                                    [--sources capsfusion|all|a,b] [--nproc 2] [--seed-check 1]
                                                    [key=value ...]

Generates the toy world once (as ``launch.demo`` does: ``DemoWorldSpec(num_train=<largest budget>)``, 500 eval
images by default) under ``--out``, then runs ``configs/study_demo.yaml`` through ``lmm-study run --backend local``
(``launch.study.main``) with ``schedules=[cosine,wsd]`` and ``caption_sources=[capsfusion]`` and the demo's data
path overrides; trailing ``key=value`` words go to lmm-study after those (study keys such as ``budgets=[...]``, or
run config keys such as ``model.llm.hidden_size=32``). Then prints:

- per schedule family: the samples its training runs processed (``lmm.study.samples_processed``: each run's newest
  checkpoint step minus the step it started from, times its global batch), the samples the job graph plans (each
  run's last leg's stop step minus its branch step), and the ratio of processed samples to cosine's;
- per caption source and budget: CIDEr x100 [95% bootstrap interval] of each family's budget point, and whether
  the value lies inside the cosine run's interval;
- the verdict against the target: WSD compute <= 0.65x cosine with every budget's WSD CIDEr inside the cosine
  run's 95% interval.

Exit status 0 whatever the verdict (it is a measurement); 1 when a job failed or a budget point has no result,
2 on a bad study. ``lmm-study`` is idempotent: re-running with the same ``--out`` reuses what is done (the
figures are then those of the earlier runs); use a fresh ``--out`` after changing the configs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGET_RATIO = 0.65
METRIC = "CIDEr"


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def planned_samples(study, jobs) -> int:
    """Samples the job graph plans for these jobs' runs: (last leg's stop step - branch step) x global batch."""
    from lmm.study import run_config

    last = {}
    for job in jobs:
        if job.kind == "train":
            last[job.run_dir] = job  # legs come in order: the last one is the run's end
    total = 0
    for job in last.values():
        config = run_config(study, job.overrides)
        start = int(Path(config.train.init_from).name.removeprefix("global_step")) if config.train.init_from else 0
        total += (job.stop_step - start) * config.train.global_batch_size
    return total


def _cell(record: dict | None) -> tuple[str, float | None, tuple[float, float] | None]:
    if record is None:
        return "missing", None, None
    value = 100 * record["metrics"][METRIC]
    interval = record.get("intervals", {}).get(METRIC)
    ci = (100 * interval[0], 100 * interval[1]) if interval else None
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " [no CI]"), value, ci


def report(study_obj, wall_s: float) -> bool:
    """Print the table and the verdict; False when a budget point has no result."""
    from lmm.study import eval_record, samples_processed

    study = study_obj.config
    families = list(study.schedules)
    others = [f for f in families if f != "cosine"]
    jobs = study_obj.jobs
    complete = True

    print(f"\nstudy compute: {study_obj.path}, caption sources {', '.join(study.caption_sources)}, budgets "
          f"{' / '.join(f'{b:,}' for b in study.budgets)} samples, schedules {', '.join(families)}")
    processed = {f: samples_processed([j for j in jobs if j.family == f]) for f in families}
    planned = {f: planned_samples(study, [j for j in jobs if j.family == f]) for f in families}
    runs = {f: len({j.run_dir for j in jobs if j.family == f and j.kind == "train"}) for f in families}
    rows = [("schedule", "runs", "samples processed", "planned", "ratio to cosine")]
    for f in families:
        ratio = processed[f] / processed["cosine"] if processed["cosine"] else float("nan")
        rows.append((f, str(runs[f]), f"{processed[f]:,}", f"{planned[f]:,}", f"{ratio:.3f}"))
    _table(rows, right=(1, 2, 3, 4))

    inside: dict[str, list[bool]] = {f: [] for f in others}
    for source in study.caption_sources:
        print(f"\n{METRIC} x100 [95% CI] at each budget point, caption source {source}:")
        header = ["budget", *families, *(f"{f} in cosine CI" for f in others)]
        rows = [tuple(header)]
        for budget in study.budgets:
            cells, values = [], {}
            for f in families:
                evals = [j for j in jobs if j.kind == "eval" and j.source == source and j.family == f
                         and j.budget == budget]
                text, value, ci = _cell(eval_record(study, evals[0], study_obj.benchmarks[evals[0].name][0])
                                        if evals else None)
                complete &= value is not None
                cells.append(text)
                values[f] = (value, ci)
            flags = []
            cos_ci = values["cosine"][1]
            for f in others:
                value = values[f][0]
                if value is None or cos_ci is None:
                    flags.append("n/a")
                    inside[f].append(False)
                else:
                    ok = cos_ci[0] <= value <= cos_ci[1]
                    inside[f].append(ok)
                    flags.append("yes" if ok else "no")
            rows.append((f"{budget:,}", *cells, *flags))
        _table(rows, right=(0,))

    print()
    for f in others:
        ratio = processed[f] / processed["cosine"] if processed["cosine"] else float("nan")
        n_in, n = sum(inside[f]), len(inside[f])
        met = ratio <= TARGET_RATIO and n_in == n and complete
        label = "WSD" if f == "wsd" else f
        print(f"verdict ({label}): compute {ratio:.3f}x cosine (target <= {TARGET_RATIO}): "
              f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}; {label} {METRIC} inside the cosine 95% interval at "
              f"{n_in}/{n} budget points: {'met' if n_in == n else 'NOT met'}  ->  target "
              f"{'MET' if met else 'NOT MET'}")
    print(f"wall time: {wall_s:.0f} s (world, every training run, every eval)")
    return complete


def seed_report(first, replicate, seed: int) -> None:
    """Cosine at seed 0 against the same recipe at another seed (model init and data order): does the bootstrap
    interval of one trained model hold a replicate of the same run?"""
    from lmm.study import eval_record

    def cosine(study_obj, source, budget):
        job = next(j for j in study_obj.jobs if j.kind == "eval" and j.source == source and j.family == "cosine"
                   and j.budget == budget)
        return _cell(eval_record(study_obj.config, job, study_obj.benchmarks[job.name][0]))

    for source in first.config.caption_sources:
        print(f"\nrun-to-run check, cosine at seed 0 vs seed {seed} (init and data order), caption source {source}:")
        rows = [("budget", "cosine seed 0", f"cosine seed {seed}", f"seed {seed} in seed-0 CI")]
        for budget in first.config.budgets:
            (text0, _, ci0), (text1, value1, _) = cosine(first, source, budget), cosine(replicate, source, budget)
            inside = "n/a" if ci0 is None or value1 is None else ("yes" if ci0[0] <= value1 <= ci0[1] else "no")
            rows.append((f"{budget:,}", text0, text1, inside))
        _table(rows, right=(0,))


def _table(rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip(), flush=True)


def main(argv: list[str] | None = None) -> int:
    from data_pipeline.demo_world import DemoWorldSpec, generate_demo_world
    from launch import study as lmm_study
    from lmm.config import ConfigError
    from lmm.study import FAMILIES, load_study
    from lmm.study_runner import Study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="configs/study_demo.yaml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/study_compute"))
    parser.add_argument("--schedules", default="cosine,wsd", help="comma-separated, cosine among them")
    parser.add_argument("--sources", default="capsfusion", help="comma-separated caption sources, or 'all' (the "
                                                                "study file's)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per run (torchrun)")
    parser.add_argument("--num-eval", type=int, default=DemoWorldSpec.num_eval, help="toy world eval images")
    parser.add_argument("--seed-check", type=int, metavar="SEED",
                        help="also run the cosine family at this seed (init and data order) and show whether it lies "
                             "inside the seed-0 intervals: the run-to-run noise the bootstrap leaves out")
    parser.add_argument("overrides", nargs="*", help="key=value overrides passed to lmm-study (study or run keys)")
    args = parser.parse_intermixed_args(argv)  # options may follow the overrides
    schedules = _list(args.schedules)
    if "cosine" not in schedules or any(s not in FAMILIES for s in schedules):
        parser.error(f"--schedules: a comma-separated subset of {','.join(FAMILIES)} that includes cosine")
    start = time.time()
    out = args.out.resolve()
    world = out / "world"
    overrides = [f"schedules=[{','.join(schedules)}]", f"output_dir={out}",
                 f"data.train_manifest={world / 'train' / 'manifest.json'}",
                 f"eval.dataset_json={world / 'eval' / 'dataset_coco.json'}", f"eval.image_root={world / 'eval'}"]
    if args.sources != "all":
        overrides.insert(0, f"caption_sources=[{','.join(_list(args.sources))}]")
    overrides += args.overrides
    try:
        budgets = load_study(args.study, [o for o in args.overrides if o.startswith("budgets=")]).budgets
    except (ConfigError, FileNotFoundError) as err:
        print(f"study error: {err}", file=sys.stderr)
        return 2
    generate_demo_world(world, DemoWorldSpec(num_train=budgets[-1], num_eval=args.num_eval))
    code = lmm_study.main(["run", args.study, "--backend", "local", "--nproc", str(args.nproc), *overrides])
    if code == 2:
        return 2
    complete = report(Study(args.study, overrides), time.time() - start)
    if args.seed_check is not None:
        replicate = [o for o in overrides if not o.startswith(("output_dir=", "schedules="))]
        replicate += ["schedules=[cosine]", f"output_dir={out / f'seed{args.seed_check}'}",
                      f"seed={args.seed_check}", f"data.seed={args.seed_check}"]
        code |= lmm_study.main(["run", args.study, "--backend", "local", "--nproc", str(args.nproc), *replicate])
        seed_report(Study(args.study, overrides), Study(args.study, replicate), args.seed_check)
    return 1 if code or not complete else 0


if __name__ == "__main__":
    sys.exit(main())
