"""Saving, resuming and publishing a distillation run, as Trainer overrides (`CheckpointHooks`, a mixin of
`DistillationTrainer`).

A checkpoint holds the student, `distillation.json` (the recipe), Trainer's optimizer and schedule, then the
projections and their optimizer, all written before `trainer_state.json`, which Trainer writes last: a checkpoint
folder with it is complete, and `resume_from_checkpoint=True` takes the last such folder. The teacher, the
projections and the training arguments never reach the student's folder or the Hub.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .model_card import RECORD_FILE, distillation_record, push_trainer, trainer_card

logger = logging.getLogger(__name__)


def last_complete_checkpoint(output_dir: str) -> str:
    """The highest-numbered checkpoint that holds trainer_state.json (written last); refuses when there is none."""
    folders = sorted(Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.split("-")[-1]))
    for folder in reversed(folders):
        if (folder / TRAINER_STATE_NAME).is_file():
            return str(folder)
        logger.warning("%s is incomplete (no %s): resuming from an earlier checkpoint.", folder, TRAINER_STATE_NAME)
    raise ValueError(f"No complete checkpoint in {output_dir} to resume from.")


class CheckpointHooks:
    """Trainer's save, resume and publish methods extended for a distillation run (mixed into
    `DistillationTrainer`, before `Seq2SeqTrainer`)."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the student (projections and teacher are not part of it) and `distillation.json`. (The pickled
        training_args.bin never holds the Hub token: see `DistillationConfig.__getstate__`.)"""
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            record = distillation_record(self)
            Path(output_dir or self.args.output_dir, RECORD_FILE).write_text(json.dumps(record, indent=2))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Trainer's optimizer and schedule, then the projections and their optimizer (`projection.py`): all before
        trainer_state.json, which Trainer writes last, so a checkpoint with it is complete."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            self.projections.save(output_dir, self)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """Trainer's train; `resume_from_checkpoint=True` takes the last *complete* checkpoint (one a kill or a full
        disk interrupted is passed over, with a warning)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Trainer's optimizer and schedule, then the projections. Trainer calls this on every resume path
        (DeepSpeed's included, which skips `_load_from_checkpoint`)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint:
            self.projections.load(checkpoint, self)

    def model_card(self, repo_id: str | None = None, **kwargs: Any):
        """The student's card: recipe, layer maps, and the report in `output_dir/report/report.json` if present."""
        return trainer_card(self, repo_id, **kwargs)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **card_kwargs: Any) -> Any:
        """Save the student and upload it with its processor, generation config and card (see `push_student`), with
        Trainer's signature (Trainer calls it itself after `save_model` when `push_to_hub=True`).

        The teacher, projections, checkpoints and training arguments stay local.
        """
        return push_trainer(self, commit_message, token, private, revision=revision, **card_kwargs)
