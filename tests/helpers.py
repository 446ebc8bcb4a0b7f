"""Shared builders for trainer tests."""

from conftest import ctc_features, whisper_features
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for
from hf_asr_distill import family_of


def make_args(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0, data_seed=0,
        remove_unused_columns=False, disable_tqdm=True,
    )
    defaults.update(kw)
    return DistillationConfig(**defaults)


def make_trainer(tmp_path, teacher, student, rows, **kw):
    features = whisper_features() if family_of(student).name == "whisper" else ctc_features()
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, **kw), train_dataset=rows,
        data_collator=collator_for(features, student),
    )


def clone_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return [k for k in before if not before[k].equal(after[k])]
