"""Start a module on N local ranks with torchrun (the single-machine launcher the demo and the tests use)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, module: str, args: list[str], capture: bool = False,
             timeout: float | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` (or ``python module args`` for a ``.py`` path) on ``nproc`` ranks, one OpenMP
    thread each; raises if any rank fails."""
    target = [module] if module.endswith(".py") else ["-m", module]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if not capture:
        print("+ " + " ".join(cmd[2:]), flush=True)
    result = subprocess.run(cmd, env=env, text=True, timeout=timeout,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)
    if result.returncode != 0:
        tail = result.stdout[-6000:] if capture else ""
        raise RuntimeError(f"{module} failed on {nproc} ranks (exit {result.returncode})\n{tail}")
    return result
