"""Which process this is: teacher passes (pseudo-labels, caches, evaluation) split their rows across the processes
that `accelerate launch` or `torchrun` started, and data preparation runs on the main process first. Also what every
training process must learn together: a non-finite loss on any one of them."""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

logger = logging.getLogger(__name__)


def has_accelerator() -> bool:
    """Whether this machine has a GPU (or another accelerator torch knows)."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6 knows every backend; older ones: CUDA
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def process_state() -> PartialState:
    """This process's place among those launched together (one process otherwise). Without an accelerator the
    processes talk over gloo: accelerate sets that up only when asked for the CPU, so it is asked here."""
    return PartialState(cpu=not has_accelerator())


def share_of(indices: list[int], batch_size: int, state: PartialState | None = None) -> list[int]:
    """This process's share of `indices`: every n-th batch of `batch_size` consecutive rows. Batches stay as one
    process alone would form them, so the outputs are the same (padding included) on any number of processes."""
    state = state or process_state()
    batches = [indices[i: i + batch_size] for i in range(0, len(indices), batch_size)]
    return [index for batch in batches[state.process_index::state.num_processes] for index in batch]


def skip_nonfinite(accelerator: Any, loss: torch.Tensor, terms: dict[str, torch.Tensor],
                   example_ids: torch.Tensor | None, training: bool, policy: str) -> bool:
    """Whether this batch is skipped for a non-finite loss on any process.

    In training every process learns it in the same step (one small all-reduce), so all stop with the same message
    (`policy="stop"`, FloatingPointError naming each process's example ids and terms) or all skip the batch
    (`policy="skip"`, True): none is left waiting in the next gradient all-reduce until the timeout. In evaluation
    a non-finite loss always raises.
    """
    distributed = training and accelerator.num_processes > 1
    bad = (~torch.isfinite(loss.detach())).float()
    if distributed:
        bad = accelerator.reduce(bad, reduction="sum")
    if not bad.item():
        return False
    here = {n: v.item() for n, v in terms.items()} if not torch.isfinite(loss) else None
    ids = example_ids.tolist() if example_ids is not None else "(ids unknown)"
    reports = [(accelerator.process_index, ids, here)]
    if distributed:  # which process saw it, and on which rows
        reports = gather_object(reports)
    where = "; ".join(f"process {rank}: examples {rows}, terms {values}" for rank, rows, values in reports
                      if values is not None)
    if not training or policy == "stop":
        raise FloatingPointError(f"The distillation loss is not finite ({where}). Check those rows' audio and "
                                 "labels, or lower the learning rate; nonfinite_loss='skip' skips such batches.")
    logger.warning("Skipped a batch with a non-finite loss on every process: %s", where)
    return True
