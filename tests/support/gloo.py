"""Start and end the gloo worker processes that the torch distributed tests spawn on CPU."""

from __future__ import annotations

import datetime
import os
import socket
import sys

import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_worker(rank: int, world: int, port: int) -> None:
    """Join a gloo group of ``world`` processes on localhost, one BLAS thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                      OPENBLAS_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))


def end_worker() -> None:
    """Wait until every rank is past its last collective, then end the process without gloo's
    teardown or the interpreter's finalization: gloo's threads there aborted a worker now and
    then ("terminate called without an active exception", a few full-suite runs in ten on 2
    cores, never a test alone). Results must be saved before this call."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
