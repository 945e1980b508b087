"""The study's job graph (lmm.study): which runs, legs, branches and evals a study implies, what each waits for,
and the refusals that keep a bad study from being submitted."""
import pytest

from conftest import REPO_ROOT
from launch.study import main as study_main
from lmm.config import ConfigError
from lmm.study import load_study, plan_jobs

PAPER = REPO_ROOT / "configs/study_capsfusion.yaml"
RUN = ["model.allow_random_frozen=true", "eval.dataset_json=/data/coco/dataset_coco.json"]


def jobs_of(*study_overrides, source="raw"):
    study = load_study(PAPER, ["caption_sources=[raw]", *study_overrides])
    return {job.name: job for job in plan_jobs(study, RUN) if job.source == source}


def test_wsd_main_run_legs_branches_and_evals():
    """100M main run in legs at the branch points (80% of 10M and of 50M), a branch per smaller budget from the
    leg's checkpoint, one eval per budget point, each job after the one it needs."""
    jobs = jobs_of()
    assert list(jobs) == ["train raw/wsd-main to step 976", "train raw/wsd-main to step 4882", "train raw/wsd-main",
                          "eval raw/wsd-main step 12207", "train raw/wsd-10M", "eval raw/wsd-10M step 1220",
                          "train raw/wsd-50M", "eval raw/wsd-50M step 6103"]
    assert jobs["train raw/wsd-main to step 4882"].after == ["train raw/wsd-main to step 976"]
    assert "train.max_steps=4882" in jobs["train raw/wsd-main to step 4882"].overrides
    branch = jobs["train raw/wsd-50M"]
    assert branch.after == ["train raw/wsd-main to step 4882"] and branch.stop_step == 6103
    assert "train.budget_samples=50000000" in branch.overrides
    assert "train.init_from=runs/study_capsfusion/raw/wsd-main/checkpoints/global_step4882" in branch.overrides
    assert "data.num_samples=100000000" in branch.overrides  # the main run's data order
    assert jobs["eval raw/wsd-50M step 6103"].after == ["train raw/wsd-50M"]
    assert str(jobs["eval raw/wsd-50M step 6103"].checkpoint).endswith("raw/wsd-50M/checkpoints/global_step6103")


def test_cosine_runs_per_budget_with_their_warmup():
    jobs = jobs_of("schedules=[cosine]")
    assert [j.name for j in jobs.values() if j.kind == "train"] == ["train raw/cosine-10M", "train raw/cosine-50M",
                                                                   "train raw/cosine-100M"]
    assert "train.warmup_steps=1000" in jobs["train raw/cosine-50M"].overrides
    assert "data.num_samples=50000000" in jobs["train raw/cosine-50M"].overrides
    assert [j.stop_step for j in jobs.values() if j.kind == "eval"] == [1220, 6103, 12207]


def test_wsd_s_is_one_run_with_an_eval_at_each_decay_end():
    jobs = jobs_of("schedules=[wsd-s]")
    assert [j.name for j in jobs.values()] == [
        "train raw/wsd-s to step 1220", "train raw/wsd-s to step 6103", "train raw/wsd-s",
        "eval raw/wsd-s step 1220", "eval raw/wsd-s step 6103", "eval raw/wsd-s step 12207"]
    assert jobs["eval raw/wsd-s step 6103"].after == ["train raw/wsd-s to step 6103"]
    assert "train.budgets=[10000000, 50000000]" in jobs["train raw/wsd-s"].overrides


@pytest.mark.parametrize("overrides,match", [
    (["budgets=[50000000,10000000]"], "ascending"),
    (["warmup_steps=[500]"], "one per budget"),
    (["schedules=[wsd]", "warmup_steps=[1100,1100,1100]"], "decay_fraction"),  # the 10M branch decays from 976
    (["caption_sources=[]"], "must not be empty"),
    (["schedules=[linear]"], "not one of"),
])
def test_bad_studies_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        plan_jobs(load_study(PAPER, overrides), RUN)


def test_cli_validates_every_run_before_submitting(capsys, tmp_path):
    """A frozen tower without weights (the paper config as shipped) is refused before sbatch is ever called."""
    assert study_main(["run", str(PAPER), f"output_dir={tmp_path}"]) == 2
    assert "nothing submitted" in capsys.readouterr().err and not (tmp_path / "study.json").exists()
    assert study_main(["run", str(PAPER), "--backend", "local", "--nproc", "3", f"output_dir={tmp_path}", *RUN]) == 2
    assert "not divisible by the world size 3" in capsys.readouterr().err


def test_an_eval_is_done_only_under_the_studys_protocol(tmp_path):
    """The study counts an eval job done by the evaluator's rule: a record of its checkpoint under the same
    protocol; after ``eval.num_beams`` changes it is to be done again."""
    from lmm.eval.evaluation import protocol, protocol_digest
    from lmm.eval.results import read_results, upsert_result
    from lmm.study import eval_plan, is_done

    study = load_study(PAPER, ["caption_sources=[raw]", f"output_dir={tmp_path}"])
    job = next(j for j in plan_jobs(study, RUN) if j.kind == "eval")
    eval_config, [target] = eval_plan(study, job)
    assert not is_done(study, job)
    proto = protocol(eval_config, target)
    upsert_result(study.results, {"run_name": "r", "caption_source": "raw", "num_samples": 1, "samples_seen": 1,
                                  "step": 1, "benchmark": target.benchmark.name, "metrics": {"CIDEr": 0.5},
                                  "checkpoint": str(job.checkpoint.resolve()), "config_digest": "x",
                                  "protocol": proto, "protocol_digest": protocol_digest(proto)})
    assert len(read_results(study.results)) == 1 and is_done(study, job)
    other = load_study(PAPER, ["caption_sources=[raw]", f"output_dir={tmp_path}", "eval_overrides=[num_beams=1]"])
    assert not is_done(other, next(j for j in plan_jobs(other, RUN) if j.name == job.name))
