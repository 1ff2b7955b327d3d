"""Data-parallel training over MPI: which rank this process is, and the collective calls the trainer
makes around the compiled steps.

A run launched by `mpirun -np N` (or `srun`) with N > 1 trains data-parallel (see
graphc.autodiff.data_parallel for the step); anything else is a single process, and needs neither
MPI nor mpi4py. Inside a step, the one allreduce is MPI's, called through the step's extern slot.
Between steps the trainer makes a few small collective calls of its own: once per epoch, the
evaluation's sums, the model state of rank 0 (batch norm's running statistics) and whether any
rank was interrupted.

Errors. A failure every rank meets at the same point (a non-finite loss: it is the global one; a
Ctrl-C, voted on inside the step; a problem found before training starts, agreed on by `together`)
is `collective`: one rank reports it and every rank exits. Any other failure is one rank's: that
rank reports it and aborts the job (MPI_Abort), so no rank waits forever for it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from graphc.errors import GraphcError

# what launchers set in each process they start: the number of processes (Open MPI, MPICH, srun)
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")


def collective(e: BaseException) -> bool:
    """Whether every rank of the job raised `e` at the same point (see the module doc)."""
    return bool(getattr(e, "collective", False))


def reports(e: BaseException, rank: int) -> bool:
    """Whether this rank prints error `e`: its own failure, or rank 0 for one they all share."""
    return bool(getattr(e, "reporter", rank == 0 or not collective(e)))


class RankFailed(GraphcError):
    """Raised by `together` on the ranks that did not fail, when another one did."""

    collective, reporter = True, False


@dataclass
class Ranks:
    """The processes of a data-parallel run, as MPI's world communicator sees them."""

    comm: Any  # mpi4py.MPI.Comm

    @property
    def rank(self) -> int:
        return int(self.comm.Get_rank())

    @property
    def size(self) -> int:
        return int(self.comm.Get_size())

    def threads(self) -> int:
        """The threads this rank computes with: its machine's cores shared among the job's
        processes there, and no more than the cores it is bound to (mpirun binds each rank to one
        by default)."""
        from mpi4py import MPI
        local = int(self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size())
        return max(1, min(len(os.sched_getaffinity(0)), (os.cpu_count() or 1) // local))

    def allreduce_in_place(self, values: np.ndarray) -> None:
        """Sums `values` over the ranks, in place: the function a step's `allreduce` slot calls."""
        from mpi4py import MPI
        self.comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)

    def sum(self, values: np.ndarray) -> np.ndarray:
        """`values` summed over the ranks (float64)."""
        out = np.ascontiguousarray(values, np.float64).copy()
        self.allreduce_in_place(out)
        return out

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank."""
        return bool(self.sum(np.array([float(flag)]))[0])

    def share(self, arrays: dict[str, np.ndarray]) -> None:
        """Overwrites each array with rank 0's, in name order."""
        for name in sorted(arrays):
            self.comm.Bcast(arrays[name], root=0)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Runs a stretch every rank goes through (loading, compiling, resuming) and agrees at its
        end on whether any rank failed: the lowest failed rank's error is raised there, marked
        collective, and RankFailed on the others, so the job ends without a rank left waiting."""
        error: BaseException | None = None
        try:
            yield
        except Exception as e:
            error = e
        failed = self.comm.allgather(error is not None)
        if not any(failed):
            return
        first = failed.index(True)
        if error is not None and self.rank == first:
            error.collective = error.reporter = True  # type: ignore[attr-defined]
            raise error
        raise RankFailed(f"rank {first} failed")

    def abort(self, code: int) -> None:
        """Ends every process of the job (this rank failed alone)."""
        self.comm.Abort(code)


def launched() -> Ranks | None:
    """The ranks of this run when a launcher started it as one of several processes, else None.
    Refuses, saying what to install, where mpi4py is missing."""
    sizes = [int(os.environ[k]) for k in _SIZE_VARS if os.environ.get(k, "").isdigit()]
    if not sizes or max(sizes) <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise GraphcError(f"this process is one of {max(sizes)} started by an MPI launcher, but mpi4py "
                          f"is not installed: data-parallel training needs it",
                          hint="pip install 'graphc[mpi]' (over the system's MPI: apt-get install "
                               "openmpi-bin libopenmpi-dev)") from None
    ranks = Ranks(MPI.COMM_WORLD)
    return ranks if ranks.size > 1 else None
