"""Data-parallel training with torch.distributed: the process group, the collectives the training
loop needs, row shards, and the local launcher behind ``xpmet train --nproc N``.

Processes find each other the way ``torchrun`` tells them: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in the environment. ``--nproc N`` sets the same variables for N
local processes, so both ways run the same code. Backend: nccl with one GPU per process
(cuda:LOCAL_RANK) when training on CUDA, gloo on the CPU.

Rank 0 does everything that must happen once (directory checks, fitting the normaliser on the
whole training split, checkpoints, the model directory, registration) and broadcasts what the
other ranks need; an error there is broadcast too, so every rank stops with the same message
instead of waiting for a collective that never comes.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from xpmet.errors import XpmetError

#: Seconds a rank waits in a collective (incl. rendezvous) before failing. Rank 0 reads the whole
#: training split for the normaliser while the others wait, so this is generous by default.
DEFAULT_TIMEOUT = 1800
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False  # initialised here, so destroyed here

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """In a process group (even of one: torchrun on one GPU runs the real nccl/DDP code)."""
        return self.backend is not None


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup(device: str, pick_device, timeout_s: float = DEFAULT_TIMEOUT) -> Context:
    """Join the process group described by the environment (a plain single process without one).

    ``pick_device(name)`` resolves the device of a single-process run.
    """
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        return Context(device=pick_device(device))
    if dist.is_initialized():  # a caller that set up its own group
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        missing = [k for k in ENV if k not in os.environ]
        if missing:
            raise XpmetError(f"WORLD_SIZE is set but {', '.join(missing)} not: start with torchrun or --nproc.")
        rank, world = int(os.environ["RANK"]), env_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise XpmetError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu.")
        if local >= torch.cuda.device_count():
            raise XpmetError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) on this node: "
                             "start at most one process per GPU.")
        dev = torch.device("cuda", local)  # one GPU per process, whatever index --device named
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    owns = False
    if not dist.is_initialized():
        with waiting(rank, timeout_s):
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                    timeout=timedelta(seconds=timeout_s))
        owns = True
    return Context(rank, world, local, dev, dist.get_backend(), owns)


@contextmanager
def waiting(rank: int, timeout_s: float):
    """A rendezvous or collective that failed or timed out -> one-line XpmetError."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        text = str(e).strip()
        # gloo reports a timeout or a vanished peer as a plain RuntimeError
        if not isinstance(e, dist.DistError) and not any(k in text.lower() for k in _PEER_ERRORS):
            raise
        first = (text.splitlines() or [type(e).__name__])[0][:300]
        raise XpmetError(f"rank {rank}: {first} ({LOST_PEER}, or did not answer within "
                         f"--dist-timeout {timeout_s:g} s)") from None


LOST_PEER = "another process failed"


_PEER_ERRORS = ("timed out", "connection closed", "connection reset", "connection refused", "gloo", "nccl")


def cleanup(ctx: Context):
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def on_main(ctx: Context, fn):
    """Run fn() on rank 0 only and broadcast its (picklable) result; an exception there is
    re-raised on rank 0 and becomes the same one-line XpmetError on every other rank."""
    if not ctx.active:
        return fn()
    box = [None]
    err = None
    if ctx.main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - every rank must learn that rank 0 failed
            err = e
            msg = str(e) if isinstance(e, XpmetError) else f"{type(e).__name__}: {e}"
            box[0] = ("error", msg)
    dist.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    status, value = box[0]
    if status == "error":
        raise XpmetError(value)
    return value


def sum_across(ctx: Context, values) -> list[float]:
    """Element-wise sum over ranks, taken from rank 0 so every rank holds identical numbers
    (decisions such as early stopping then cannot differ between ranks)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.active:
        dist.all_reduce(t)
        dist.broadcast(t, src=0)
    return t.tolist()


def gather_objects(ctx: Context, obj) -> list:
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def shard(n: int, rank: int, world: int) -> np.ndarray:
    """Positions 0..n-1 of rank's contiguous shard, padded by repeating its own first rows to
    ceil(n / world) so every rank runs the same number of steps (DDP needs that)."""
    lo, hi = rank * n // world, (rank + 1) * n // world
    size = -(-n // world)
    return np.resize(np.arange(lo, hi), size) if hi > lo else np.zeros(0, np.int64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(index, nproc, port, fn, args):
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(*args)


def launch(fn, args: tuple, nproc: int):
    """Run fn(*args) in nproc local processes (as torchrun would); the first failure ends all of
    them (SIGTERM, then SIGKILL) and is raised here as a one-line XpmetError."""
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes
    if env_world_size() > 1:
        raise XpmetError("--nproc inside a torchrun job: let torchrun start the processes (drop --nproc).")
    log = logging.getLogger("torch.multiprocessing.spawn")  # "terminating process ..." per survivor
    level = log.level
    log.setLevel(logging.ERROR)
    procs = None
    try:
        procs = start_processes(_worker, args=(nproc, free_port(), fn, args), nprocs=nproc, join=False,
                                start_method="spawn")
        while not procs.join():
            pass
    except ProcessRaisedException as e:
        # several ranks may have failed: name the cause, not a rank that only lost its peer
        errors = _errors(procs)
        index = next((i for i, m in errors.items() if LOST_PEER not in m), e.error_index)
        raise XpmetError(f"training process {index} failed: {_last_line(errors.get(index, str(e)))}") from None
    except ProcessExitedException as e:
        raise XpmetError(f"training process {e.error_index} died ({e}); the others were stopped.") from None
    finally:
        log.setLevel(level)
        for f in getattr(procs, "error_files", []):
            if os.path.exists(f):
                os.unlink(f)


def _errors(procs) -> dict:
    """{process index: traceback text} of every process that raised."""
    out = {}
    for i, f in enumerate(getattr(procs, "error_files", [])):
        if os.path.exists(f) and os.path.getsize(f):
            with open(f, "rb") as fh:
                out[i] = pickle.load(fh)
    return out


def _last_line(text: str) -> str:
    line = next((s.strip() for s in reversed(text.strip().splitlines()) if s.strip()), text)
    prefix = "xpmet.errors.XpmetError: "
    return line[len(prefix):] if line.startswith(prefix) else line
