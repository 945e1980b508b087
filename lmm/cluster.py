"""What a Slurm cluster's nodes have, as ``sinfo`` reports it: CPUs, memory, GPUs and partitions per node. A request
is checked against it before submission (``launch.submit``), since Slurm queues a job that no node can ever run."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, replace

from lmm.config import ConfigError


@dataclass(frozen=True)
class Node:
    """One node as ``sinfo`` reports it."""
    name: str
    cpus: int
    mem_mb: int
    gpus: int
    partitions: tuple[str, ...]  # as sinfo prints them: the default one ends with "*"


SINFO_FORMAT = "%N|%c|%m|%G|%P"  # one line per node and partition


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from ``sinfo -h -N -o SINFO_FORMAT`` output; a node in several partitions is listed once."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, cpus, mem, gres, partition = line.strip().split("|")
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:(),]+)?:(\d+)", gres))  # gpu:8, gpu:a100:8(S:0-1)
        node = nodes.get(name) or Node(name, int(cpus), int(mem.rstrip("+") or 0), gpus, ())
        nodes[name] = replace(node, partitions=(*node.partitions, partition))
    return list(nodes.values())


def cluster_nodes() -> list[Node] | None:
    """The cluster's nodes, or None when there is no ``sinfo`` (or it fails): then nothing is checked."""
    if not shutil.which("sinfo"):
        return None
    result = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60)
    return parse_sinfo(result.stdout) if result.returncode == 0 else None


def partition_nodes(nodes: list[Node], partition: str | None) -> list[Node]:
    """The nodes a job submitted to ``partition`` (None: the default one) can land on."""
    if partition is None:  # the default partition's nodes, or all when none is marked
        return [n for n in nodes if any(p.endswith("*") for p in n.partitions)] or nodes
    found = [n for n in nodes if partition in (p.rstrip("*") for p in n.partitions)]
    if not found:
        known = sorted({p.rstrip("*") for n in nodes for p in n.partitions})
        raise ConfigError(f"no partition {partition!r} on this cluster (sinfo lists: {', '.join(known)})")
    return found
