"""Trains a tiny CTC student with hidden-state KD, saving a checkpoint every step; run as a subprocess.

    python train_worker.py OUT_DIR [RESUME_CHECKPOINT] [SLEEP_PER_STEP]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from transformers import TrainerCallback  # noqa: E402

from conftest import ctc_rows, tiny_ctc  # noqa: E402
from helpers import make_trainer  # noqa: E402
from hf_asr_distill import make_student  # noqa: E402
from pathlib import Path  # noqa: E402


class Slow(TrainerCallback):
    """Gives the test time to kill the process between checkpoints."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, *args, **kwargs):
        time.sleep(self.seconds)


if __name__ == "__main__":
    out, resume = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None)
    sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
    trainer = make_trainer(Path(out), teacher, student, ctc_rows(16), alpha_hidden=1.0, max_steps=6,
                           save_strategy="steps", save_steps=1, per_device_train_batch_size=2)
    trainer.add_callback(Slow(sleep))
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(Path(out) / "final"))
    import torch

    torch.save({k: v.clone() for k, v in trainer.projections.state_dict().items()}, Path(out) / "projections.pt")
