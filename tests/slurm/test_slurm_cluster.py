"""The launch layer against real Slurm daemons: a private 2-node cluster (start_local_cluster.sh) runs the very
``slurm/pretrain_10m.sh`` users submit, with tiny-model overrides on CPU/gloo.

Where Slurm cannot start (not root, no apt) these tests skip with the reason; with ``LMM_REQUIRE_SLURM=1`` (CI)
that is a failure instead.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TINY_OVERRIDES, assert_same_weights, consolidated_weights
from lmm.training.checkpoint import complete_checkpoints, read_meta

HERE = Path(__file__).resolve().parent
PRETRAIN_10M = "slurm/pretrain_10m.sh"
STEPS = 32  # the whole 512-sample toy world at global batch 16
# sbatch flags override the script's GPU-cluster headers: 2 nodes x 1 CPU task
CPU_FLAGS = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
RUNNING_STATES = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED", "RESIZING"}


def slurm(*args: str, check: bool = True) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def cluster():
    """The local cluster's SLURM_CONF; stopped at the end unless it was already running (someone else's)."""
    result = subprocess.run([str(HERE / "start_local_cluster.sh")], capture_output=True, text=True, timeout=600)
    if result.returncode:
        reason = f"local Slurm cluster could not start: {result.stderr.strip()[-800:]}"
        if os.environ.get("LMM_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    conf = result.stdout.strip().split("=", 1)[1]
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if "already running" not in result.stderr:
        subprocess.run([str(HERE / "stop_local_cluster.sh")], timeout=120)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def run_overrides(world: Path, out: Path, *extra: str) -> list[str]:
    return ["model.vision.name=EVA01-tiny-14", "train.precision=fp32", "model.allow_random_frozen=true",
            *TINY_OVERRIDES, "data.num_workers=2",  # Slurm signals the loader workers too
            f"data.train_manifest={world / 'train' / 'manifest.json'}", "data.num_samples=512",
            "train.checkpoint_every=8", f"output_dir={out}", *extra]


def sbatch(out: Path | None, args: list[str], script: str = PRETRAIN_10M, flags: list[str] = CPU_FLAGS,
           python: str = sys.executable, cwd: Path = REPO_ROOT) -> str:
    """Submit a slurm/ batch script (from the repository root, as a user would) with its log at ``<out>.log``
    (None: the script's own ``--output``); returns the job id."""
    env = {**os.environ, "LMM_PYTHON": python}
    output = [f"--output={out}.log"] if out else []
    result = subprocess.run(["sbatch", "--parsable", *flags, *output, script, *args],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_state(job: str) -> tuple[str, str]:
    """(state, exit code) of the job's newest incarnation, from accounting."""
    lines = slurm("sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", job).splitlines()
    if not lines:
        return "PENDING", ""
    state, exit_code = lines[-1].split("|")
    return state.split()[0], exit_code


def wait_for_end(job: str, timeout: float = 300) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, exit_code = job_state(job)
        if state not in RUNNING_STATES and not slurm("squeue", "-h", "-j", job, check=False):
            return state, exit_code
        time.sleep(1)
    slurm("scancel", job, check=False)
    raise AssertionError(f"job {job} still running after {timeout}s")


def wait_for_log(log: Path, text: str, after: str = "", timeout: float = 240) -> None:
    """Wait until ``text`` appears in the job log (after the last occurrence of ``after``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text() if log.exists() else ""
        if text in content[content.rfind(after):] if after else text in content:
            return
        time.sleep(0.2)
    raise AssertionError(f"'{text}' never appeared in {log}:\n{content[-3000:]}")


STEP_LINE = re.compile(r"lmm\.training\.metrics: step (\d+)/")  # a metrics line (lmm.training.metrics)


def logged_steps(log: Path) -> list[int]:
    return [step for segment in steps_per_start(log) for step in segment]


def steps_per_start(log: Path) -> list[list[int]]:
    """The steps each start of the job (first run, requeues, resubmissions) logged."""
    segments = []
    for line in log.read_text().splitlines():
        if line.startswith("[launch] job "):
            segments.append([])
        elif step := STEP_LINE.search(line):
            segments[-1].append(int(step.group(1)))
    return segments


def final_weights(out: Path) -> dict:
    return consolidated_weights(complete_checkpoints(out)[-1])


@pytest.fixture(scope="module")
def uninterrupted(cluster, demo_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm") / "uninterrupted"
    job = sbatch(out, run_overrides(demo_world, out))
    return out, job, wait_for_end(job)


def test_pretrain_script_trains_on_two_nodes_and_exits_0(uninterrupted):
    out, job, (state, exit_code) = uninterrupted
    log = Path(f"{out}.log").read_text()
    assert (state, exit_code) == ("COMPLETED", "0:0"), log[-3000:]
    assert f"[launch] job {job} (restart 0) on n[1-2]: 2 tasks, master n1:" in log
    assert f"[launch] python {sys.executable}, lmm-scaling " in log
    assert logged_steps(Path(f"{out}.log")) == list(range(1, STEPS + 1))
    assert [read_meta(c).step for c in complete_checkpoints(out)] == [8, 16, 24, 32]
    assert slurm("sacct", "-X", "-n", "-P", "-o", "NNodes", "-j", job) == "2"


def test_eval_script_evaluates_every_checkpoint_of_the_run_on_two_ranks(uninterrupted, demo_world, tmp_path):
    import json

    run, _, _ = uninterrupted
    results = tmp_path / "results.jsonl"
    job = sbatch(tmp_path / "eval", [str(run), "--results", str(results),
                                     f"eval.dataset_json={demo_world / 'eval' / 'dataset_coco.json'}",
                                     f"eval.image_root={demo_world / 'eval'}", "eval.meteor=false"],
                 script="slurm/eval.sh", flags=["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
                                                "--cpus-per-task=1", "--time=10"])
    assert wait_for_end(job) == ("COMPLETED", "0:0"), Path(f"{tmp_path / 'eval'}.log").read_text()[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["step"] for r in records) == [8, 16, 24, 32]
    assert {r["eval_world_size"] for r in records} == {2} and all("CIDEr" in r["metrics"] for r in records)


def test_preempted_job_checkpoints_requeues_resumes_and_matches_uninterrupted(uninterrupted, demo_world):
    """``scontrol requeue`` (SIGTERM to every process of the step, loader workers included) -> checkpoint -> Slurm's
    own requeue, recognised as such -> the restarted job resumes by itself. A USR1 (what ``--signal`` sends before
    a time limit) then exceeds train.max_requeues=1: it checkpoints and exits 75 without requeueing; resubmitting
    finishes the run with the uninterrupted run's weights, every step once, every sample once."""
    base_out, _, _ = uninterrupted
    out = base_out.parent / "preempted"
    log = Path(f"{out}.log")
    overrides = run_overrides(demo_world, out, "train.max_requeues=1", "train.sample_ledger=true")
    job = sbatch(out, overrides)

    wait_for_log(log, "metrics: step 2/")
    requeued_at = time.monotonic()
    slurm("scontrol", "requeue", job)
    wait_for_log(log, "after the stop signal")
    checkpointed_in = time.monotonic() - requeued_at
    wait_for_log(log, f"[launch] job {job} (restart 1)")
    wait_for_log(log, '{"parameters"', after="(restart 1)")  # the restarted ranks are about to train
    slurm("scancel", "--signal=USR1", job)
    state, exit_code = wait_for_end(job)
    text = log.read_text()
    assert f"job {job} was requeued by Slurm (restart 1)" in text, text[-3000:]
    assert "scontrol requeue" not in text and "Traceback" not in text and "killed by signal" not in text
    assert "not requeueing" in text and "not requeued: resubmit to resume" in text, text[-3000:]
    assert (state, exit_code) == ("FAILED", "75:0"), text[-3000:]  # stopped early, resumable
    first, second = steps_per_start(log)
    assert first[0] == 1 and second[0] == first[-1] + 1  # the restart continued right after the saved step
    assert 2 <= first[-1] < second[-1] < STEPS
    assert {first[-1], second[-1]} <= {read_meta(c).step for c in complete_checkpoints(out)}
    print(f"[figures] scontrol requeue -> checkpoint written: {checkpointed_in:.1f} s (as seen by the test)")

    resubmitted = sbatch(out, overrides)
    assert wait_for_end(resubmitted) == ("COMPLETED", "0:0")
    assert logged_steps(log) == list(range(1, STEPS + 1))  # none repeated, none skipped
    assert_same_weights(final_weights(base_out), final_weights(out))
    checked = subprocess.run([sys.executable, "-m", "launch.check_ledger", str(out)], capture_output=True,
                             text=True, cwd=REPO_ROOT)
    summary = json.loads(checked.stdout)
    assert checked.returncode == 0 and (summary["repeats"], summary["unread"]) == (0, 0), checked
    print(f"[figures] ledger after requeue + stop + resubmit: {checked.stdout.strip()}")


def test_a_changed_config_is_refused_on_every_rank_with_exit_2(uninterrupted, demo_world):
    """Resubmitting a finished run with another caption source: every rank refuses before writing anything."""
    base_out, _, _ = uninterrupted
    saved = (base_out / "config.json").read_text()
    out = base_out.parent / "changed"
    job = sbatch(out, run_overrides(demo_world, base_out, "data.caption_source=raw"))
    assert wait_for_end(job) == ("FAILED", "2:0")
    text = Path(f"{out}.log").read_text()
    assert "data.caption_source: 'capsfusion' (run) -> 'raw' (now)" in text, text[-3000:]
    assert (base_out / "config.json").read_text() == saved


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """An interpreter without the project's packages (a venv without pip, no system site-packages)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    return str(venv / "bin" / "python")


def test_an_interpreter_without_the_packages_fails_in_one_line(cluster, bare_python, tmp_path):
    """Submitted from another directory with ``--output``: the launcher next to the script still runs, in the
    checkout, and the missing packages end the job in one line."""
    out = tmp_path / "bare"
    job = sbatch(out, [], script=str(REPO_ROOT / PRETRAIN_10M), python=bare_python, cwd=tmp_path)
    assert wait_for_end(job, timeout=120) == ("FAILED", "1:0")
    text = Path(f"{out}.log").read_text()
    assert (f"[launch] error: {bare_python} cannot import the project's packages (ModuleNotFoundError: No module "
            f"named") in text, text
    assert f"run 'make setup' in {REPO_ROOT}, or set LMM_PYTHON" in text and "Traceback" not in text


def test_submitted_from_another_directory_it_fails_at_launch_unless_chdir_names_the_checkout(cluster, bare_python,
                                                                                            tmp_path):
    """What the README says: without ``--output`` or ``--chdir``, Slurm cannot open ``slurm/logs/...`` under the
    submit directory and the job fails before the script runs; with ``--chdir`` the log is the checkout's."""
    script, flags = str(REPO_ROOT / "slurm/pretrain.sh"), ["--ntasks=1", "--time=5"]
    job = sbatch(None, [], script=script, flags=flags, python=bare_python, cwd=tmp_path)
    assert wait_for_end(job, timeout=60)[0] == "FAILED"
    shown = slurm("scontrol", "show", "job", job)
    assert "Reason=JobLaunchFailure" in shown and f"StdOut={tmp_path}/slurm/logs/lmm-pretrain-{job}.out" in shown

    job = sbatch(None, [], script=script, flags=[*flags, f"--chdir={REPO_ROOT}"], python=bare_python, cwd=tmp_path)
    assert wait_for_end(job, timeout=120) == ("FAILED", "1:0")
    log = REPO_ROOT / f"slurm/logs/lmm-pretrain-{job}.out"
    assert "cannot import the project's packages" in log.read_text()
    log.unlink()


def readme_block(name: str) -> str:
    """The bash block between ``<!-- name ...-->`` and ``<!-- /name -->`` in README.md."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split(f"<!-- {name}", 1)[1].split(f"<!-- /{name} -->", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_readme_smoke_run_works_as_written(cluster):
    """README's first Slurm block, verbatim from the checkout with its own .venv: a tiny world, then 2 steps of
    configs/demo.yaml through slurm/pretrain.sh on 2 CPU tasks, one checkpoint per step."""
    run = REPO_ROOT / "runs/smoke/run"
    shutil.rmtree(run, ignore_errors=True)  # the block resumes a finished run: start afresh to see it train
    env = {k: v for k, v in os.environ.items() if k != "LMM_PYTHON"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("smoke-run")], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    job = re.search(r"Submitted batch job (\d+)", result.stdout)
    log = REPO_ROOT / f"slurm/logs/lmm-smoke-{job[1]}.out" if job else None
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:], log and log.read_text()[-3000:])
    assert job_state(job[1]) == ("COMPLETED", "0:0")
    assert [read_meta(c).step for c in complete_checkpoints(run)] == [0, 1, 2]
    assert "global_step2" in result.stdout
    assert f"[launch] python {REPO_ROOT / '.venv/bin/python'}, lmm-scaling " in log.read_text()
    log.unlink()


def test_a_dead_rank_fails_the_job_within_two_minutes(cluster, demo_world, tmp_path):
    out = tmp_path / "dead-rank"
    job = sbatch(out, run_overrides(demo_world, out))
    wait_for_log(Path(f"{out}.log"), "metrics: step 1/")
    victims = [pid for pid in _pids_of_run(out) if _environ(pid).get("SLURM_PROCID") == "1"]
    assert victims, "rank 1 not found"
    started = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    state, exit_code = wait_for_end(job, timeout=180)
    assert time.monotonic() - started < 120
    assert state == "FAILED" and exit_code != "0:0", (state, exit_code)
    text = Path(f"{out}.log").read_text()
    assert "rank 0: rank 1 stopped responding" in text and "stop signal received" not in text, text[-3000:]


def test_submitit_job_is_preempted_requeued_and_resumed_by_submitit(uninterrupted, demo_world, tmp_path):
    """submitit submits to the same cluster; its preemption signal (USR2) -> our checkpoint -> submitit's
    checkpoint-and-requeue -> the requeued job resumes; the result only arrives when the run has finished."""
    from launch.submit import SubmitOptions, submit_pretrain

    base_out, _, _ = uninterrupted
    options = SubmitOptions(executor="slurm", nodes=2, gpus_per_node=0, tasks_per_node=1, cpus_per_task=1,
                            time_min=10, folder=str(tmp_path / "submitit" / "%j"))
    out = tmp_path / "submitit-run"
    job = submit_pretrain(str(REPO_ROOT / "configs/capsfusion_10m.yaml"), run_overrides(demo_world, out), options)
    log = tmp_path / "submitit" / job.job_id / f"{job.job_id}_0_log.out"
    wait_for_log(log, "metrics: step 2/")
    slurm("scancel", "--signal=USR2", job.job_id)
    assert job.results() == [0, 0]
    text = log.read_text()
    assert "Requeued job" in text, text[-3000:]
    steps = [int(step.group(1)) for step in STEP_LINE.finditer(text)]
    assert steps == list(range(1, STEPS + 1))
    assert_same_weights(final_weights(base_out), final_weights(out))


def test_submit_refuses_a_bad_config_and_submits_nothing(cluster, demo_world, tmp_path, capsys):
    """A bad config, a batch that does not split, a model that does not fit, and a job no node of this cluster
    (two 2-CPU nodes, no GPUs) could ever run; --cpus-per-task defaults to what the nodes have."""
    from launch.submit import SubmitOptions, fit_to_cluster
    from launch.submit import main as submit_main

    config = str(REPO_ROOT / "configs/capsfusion_10m.yaml")
    jobs_before = slurm("sacct", "-X", "-n", "-P", "-o", "JobID").splitlines()
    assert submit_main(["--config", config, "--nodes", "2", "--gpus-per-node", "0", "--folder", str(tmp_path),
                        "train.lrr=1"]) == 2
    assert submit_main(["--config", config, "--nodes", "3", "--gpus-per-node", "0", "--folder", str(tmp_path),
                        *run_overrides(demo_world, tmp_path / "run")]) == 2  # 16 does not split over 3 ranks
    assert submit_main(["--config", config, "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem-gb", "16",
                        "--folder", str(tmp_path)]) == 2  # the full-size model does not fit 16 GB GPUs
    capsys.readouterr()
    assert submit_main(["--config", config, "--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "1",
                        "--cpus-per-task", "4", "--folder", str(tmp_path),
                        *run_overrides(demo_world, tmp_path / "run")]) == 2
    assert "would pend forever: it asks 2 node(s) with 1 tasks x 4 CPUs, 0 GPUs each, but the default partition " \
           "has 2 node(s) with 2 CPUs" in capsys.readouterr().err
    assert fit_to_cluster(SubmitOptions(nodes=2, gpus_per_node=0, tasks_per_node=1)).cpus_per_task == 2
    assert slurm("sacct", "-X", "-n", "-P", "-o", "JobID").splitlines() == jobs_before


def _pids_of_run(out: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"output_dir={out}" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_a_study_is_submitted_with_dependencies_once_and_ends_with_its_plot(cluster, demo_world, tmp_path,
                                                                          monkeypatch):
    """lmm-study on the real cluster: every job submitted once with afterok dependencies (a decay branch cannot
    start before its parent's checkpoint exists, so success shows the order held), a re-run while they are queued
    submits nothing, the plot job runs after the evals, and a re-run at the end finds everything done."""
    import contextlib
    import io

    import yaml

    from launch.study import main as study_main

    out = tmp_path / "study"
    # one node per job: the main run's last leg and the branch (and the two evals) run side by side
    one_node = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "slurm-study", "config": str(REPO_ROOT / "configs/demo.yaml"), "output_dir": str(out),
        "caption_sources": ["capsfusion"], "budgets": [64, 128], "schedules": ["wsd"], "decay_fraction": 0.25,
        "overrides": ["train.checkpoint_at_start=false"],
        "slurm": {"train": one_node, "eval": one_node, "plot": ["--ntasks=1", "--time=10"]}}))
    overrides = [o for o in run_overrides(demo_world, out) if not o.startswith(("output_dir=", "data.num_samples="))]
    overrides += [f"eval.dataset_json={demo_world / 'eval' / 'dataset_coco.json'}",
                  f"eval.image_root={demo_world / 'eval'}"]
    monkeypatch.chdir(REPO_ROOT)

    def study(*args):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            assert study_main([*args, str(path), *overrides]) == 0
        return log.getvalue()

    first = study("run")
    assert first.count("lmm.study_runner: submitted") == 6, first  # 3 training legs/branches, 2 evals, the plot
    assert "train capsfusion/wsd-64 (job" in first and " after " in first
    again = study("run")
    assert "lmm.study_runner: submitted" not in again and again.count("lmm.study_runner: queued") == 5, again
    ids = [entry["job_id"] for entry in json.loads((out / "study.json").read_text())["jobs"].values()]
    for job in ids:
        assert wait_for_end(job, timeout=420)[0] == "COMPLETED", job
    deadline = time.monotonic() + 120  # the plot job runs after the last eval
    while not (out / "scaling.png").is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert (out / "scaling.png").is_file(), sorted(p.name for p in (out / "logs").iterdir())
    final = study("run")
    assert final.count("lmm.study_runner: done") == 5 and "lmm.study_runner: submitted" not in final
    status = study("status")
    assert "eval capsfusion/wsd-64 step 4" in status and "done" in status
