"""Which process this is: teacher passes (pseudo-labels, caches, evaluation) split their rows across the processes
that `accelerate launch` or `torchrun` started, and data preparation runs on the main process first."""

from __future__ import annotations

import torch
from accelerate import PartialState


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
