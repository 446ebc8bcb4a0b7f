"""Trains a tiny Whisper student for a few steps; run alone or under torchrun. Writes a JSON summary."""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from conftest import tiny_whisper, whisper_features, whisper_rows  # noqa: E402
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student  # noqa: E402


def digest(module):
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode() + v.detach().float().numpy().tobytes())
    return h.hexdigest()


def main(out_dir, per_device_batch):
    torch.manual_seed(0)
    teacher = tiny_whisper()
    student, _ = make_student(teacher, decoder_layers=2, d_model=16, encoder_attention_heads=2,
                              decoder_attention_heads=2, encoder_layers=2)
    args = DistillationConfig(
        output_dir=out_dir, per_device_train_batch_size=per_device_batch, max_steps=3, learning_rate=1e-2,
        optim="sgd", logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True, alpha_hidden=1.0, ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
    )
    # Equal label lengths: per-process means of the hidden term then equal the global mean, so runs match closely.
    rows = [{**r, "labels": (list(r["labels"]) * 3)[:8]} for r in whisper_rows(24)]
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows,
                                  data_collator=collator_for(whisper_features(), student))
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    summary = {
        "world": trainer.args.world_size,
        "teacher_wrapped": type(trainer.teacher).__name__,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "kd": [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e],
        "student": {k: v.tolist() for k, v in trainer.model.state_dict().items() if "decoder.layers.1.fc2" in k},
        "projections": digest(trainer.projections),
    }
    with open(os.path.join(out_dir, f"summary_rank{rank}.json"), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
