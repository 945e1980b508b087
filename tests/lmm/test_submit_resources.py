"""lmm-submit's check of a request against the nodes sinfo reports: canned ``sinfo`` output, nothing submitted."""
from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from launch import submit
from launch.submit import SubmitOptions, check_resources, fit_to_cluster, fitting_cpus_per_task
from lmm import cluster
from lmm.cluster import parse_sinfo
from lmm.config import ConfigError

# sinfo -h -N -o SINFO_FORMAT: gpu002 is in two partitions, gpu is the default one
GPU_CLUSTER = parse_sinfo("""\
gpu001|96|1000000|gpu:a100:8(S:0-1)|gpu*
gpu002|96|1000000|gpu:a100:8(S:0-1)|gpu*
gpu002|96|1000000|gpu:a100:8(S:0-1)|long
cpu001|64|256000+|(null)|cpu
""")
SMALL_CLUSTER = parse_sinfo("n1|2|1|(null)|debug*\nn2|2|1|(null)|debug*\n")


def test_sinfo_lines_become_one_node_each_with_its_gpus_and_partitions():
    assert [(n.name, n.cpus, n.mem_mb, n.gpus, n.partitions) for n in GPU_CLUSTER] == [
        ("gpu001", 96, 1000000, 8, ("gpu*",)), ("gpu002", 96, 1000000, 8, ("gpu*", "long")),
        ("cpu001", 64, 256000, 0, ("cpu",))]
    assert parse_sinfo("x|4|10|gpu:2,gpu:v100:1(S:0,1)|p\n")[0].gpus == 3


def options(**kwargs) -> SubmitOptions:
    return SubmitOptions(**{"cpus_per_task": 8, **kwargs})


@pytest.mark.parametrize("request_", [
    dict(nodes=2), dict(nodes=1, partition="long"), dict(nodes=1, gpus_per_node=0, partition="cpu"),
    dict(nodes=2, mem_gb=900), dict(nodes=2, tasks_per_node=8, cpus_per_task=12)])
def test_a_request_the_nodes_can_run_passes(request_):
    check_resources(options(**request_), GPU_CLUSTER)


@pytest.mark.parametrize("request_, reason", [
    (dict(nodes=3), "2 node(s) with 96 CPUs, 8 GPUs, 1000000 MB"),  # only 2 in the default partition
    (dict(nodes=2, partition="long"), "partition 'long' has 1 node(s)"),
    (dict(nodes=1, partition="cpu"), "8 GPUs each"),
    (dict(nodes=1, cpus_per_task=13), "8 tasks x 13 CPUs"),
    (dict(nodes=1, mem_gb=2000), "2048000 MB each"),
])
def test_a_request_no_node_can_run_is_refused_with_what_the_nodes_have(request_, reason):
    with pytest.raises(ConfigError, match="would pend forever") as err:
        check_resources(options(**request_), GPU_CLUSTER)
    assert reason in str(err.value)


def test_an_unknown_partition_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"no partition 'a100' .*: cpu, gpu, long"):
        check_resources(options(partition="a100"), GPU_CLUSTER)


def test_cpus_per_task_defaults_to_8_or_what_the_smallest_node_has_per_task():
    assert fitting_cpus_per_task(SubmitOptions(), GPU_CLUSTER) == 8
    assert fitting_cpus_per_task(SubmitOptions(gpus_per_node=0, partition="cpu", tasks_per_node=16), GPU_CLUSTER) == 4
    assert fitting_cpus_per_task(SubmitOptions(gpus_per_node=0, tasks_per_node=2), SMALL_CLUSTER) == 1
    assert fitting_cpus_per_task(SubmitOptions(gpus_per_node=0, tasks_per_node=1), SMALL_CLUSTER) == 2
    assert fitting_cpus_per_task(SubmitOptions(), []) == 8  # no sinfo


def test_without_sinfo_nothing_is_checked(monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    assert fit_to_cluster(SubmitOptions(nodes=100)).cpus_per_task == 8
    assert fit_to_cluster(SubmitOptions(executor="local", nodes=100)).nodes == 100


def test_submit_exits_2_and_submits_nothing_when_no_node_fits(monkeypatch, capsys):
    monkeypatch.setattr(submit, "cluster_nodes", lambda: SMALL_CLUSTER)
    monkeypatch.setattr(submit, "make_executor", lambda *args: pytest.fail("submitted"))
    code = submit.main(["--config", str(REPO_ROOT / "configs/demo.yaml"), "--gpus-per-node", "0",
                        "--tasks-per-node", "2", "--cpus-per-task", "2"])
    assert code == 2
    assert ("nothing submitted): the job would pend forever: it asks 1 node(s) with 2 tasks x 2 CPUs, 0 GPUs each, "
            "but the default partition has 2 node(s) with 2 CPUs, 0 GPUs, 1 MB") in capsys.readouterr().err
