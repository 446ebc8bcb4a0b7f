import logging

import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2ForCTC

from conftest import ctc_rows, tiny_ctc, tiny_whisper, whisper_rows
from helpers import changed, clone_state, make_trainer
from hf_asr_distill import make_student
from hf_asr_distill.trainer import PROJECTIONS_FILE


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_whisper_default_maps_follow_make_student(tmp_path):
    teacher = tiny_whisper()
    student, _ = make_student(teacher, decoder_layers=2, encoder_layers=2)
    trainer = make_trainer(tmp_path, teacher, student, whisper_rows(), alpha_hidden=1.0)
    # make_student copied encoder layers 0, 3 and decoder layers 0, 3: hidden-state indices are one higher.
    assert trainer.layer_maps == {"encoder": {1: 1, 2: 4}, "decoder": {1: 1, 2: 4}}
    assert set(trainer.projections) == {"encoder_1_to_1", "encoder_2_to_4", "decoder_1_to_1", "decoder_2_to_4"}


def test_whisper_shared_encoder_maps_only_the_decoder(tmp_path):
    teacher = tiny_whisper()
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    trainer = make_trainer(tmp_path, teacher, student, whisper_rows(), alpha_hidden=1.0)
    assert trainer.layer_maps == {"decoder": {1: 1, 2: 4}}
    with pytest.raises(ValueError, match="pointless"):
        make_trainer(tmp_path, teacher, student, whisper_rows(), alpha_hidden=1.0, encoder_layer_map={"1": 1})


def test_uniform_default_map_without_make_student(tmp_path):
    teacher, student = tiny_ctc(num_hidden_layers=4), tiny_ctc(num_hidden_layers=2, seed=1)
    trainer = make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_hidden=1.0)
    assert trainer.layer_maps == {"encoder": {1: 2, 2: 4}}


@pytest.mark.parametrize("family", ["whisper", "ctc"])
def test_projections_and_student_learn_and_loss_hidden_is_logged(tmp_path, family, caplog):
    if family == "whisper":
        teacher, rows = tiny_whisper(), whisper_rows()
        student, _ = make_student(teacher, decoder_layers=2, encoder_layers=2, d_model=16,
                                  encoder_attention_heads=2, decoder_attention_heads=2)
    else:  # narrower student at half the teacher's frame rate
        teacher, rows = tiny_ctc(), ctc_rows()
        student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16, conv_stride=(4, 8))
    kw = {"hidden_layer_map": {"1": 2, "2": 4}} if family == "ctc" else {}
    trainer = make_trainer(tmp_path, teacher, student, rows, alpha_hidden=1.0, hidden_loss="l1_cosine", **kw)
    projections_before, student_before = clone_state(trainer.projections), clone_state(student)
    with caplog.at_level(logging.DEBUG, logger="hf_asr_distill"):
        trainer.train()
    assert len(changed(projections_before, trainer.projections)) == len(projections_before)
    assert changed(student_before, student)
    assert len(logged(trainer, "loss_hidden")) == 3
    assert "hidden losses" in caplog.text  # per-layer values at debug level
    assert not any("_to_" in name for name in student.state_dict())  # projections are not part of the student
    # the projections have an optimizer of their own (DDP, DeepSpeed and FSDP only handle the student's)
    ids = lambda opt: {id(p) for g in opt.param_groups for p in g["params"]}  # noqa: E731
    assert ids(trainer.projection_optimizer) == {id(p) for p in trainer.projections.parameters()}
    assert ids(trainer.optimizer).isdisjoint(ids(trainer.projection_optimizer))


def test_projection_none_needs_equal_sizes(tmp_path):
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
    with pytest.raises(ValueError, match="student 16 != teacher 32"):
        make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_hidden=1.0, projection="none")
    same, _ = make_student(teacher, num_hidden_layers=2)
    trainer = make_trainer(tmp_path, teacher, same, ctc_rows(), alpha_hidden=1.0, projection="none")
    assert len(list(trainer.projections.parameters())) == 0


def test_layer_map_naming_a_missing_layer_is_refused(tmp_path):
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"student has hidden states 0..2, the teacher 0..4"):
        make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_hidden=1.0, hidden_layer_map='{"3": 4}')
    with pytest.raises(ValueError, match="CTC models use hidden_layer_map"):
        make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_hidden=1.0, decoder_layer_map='{"1": 1}')


def test_projection_learning_rate_is_their_optimizers(tmp_path):
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
    trainer = make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_hidden=1.0, projection="mlp",
                           projection_learning_rate=0.05, lr_scheduler_type="constant")
    trainer.train()
    assert [g["lr"] for g in trainer.projection_optimizer.param_groups] == [0.05]
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-3}
    assert [g["weight_decay"] for g in trainer.projection_optimizer.param_groups] == [0.0]


def test_a_second_train_call_gives_the_projections_a_fresh_schedule(tmp_path):
    # Trainer remakes its schedule for each train(); the projections' must follow, or a linear schedule spent by the
    # first call would leave them at learning rate 0 in the second while the student trains.
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
    trainer = make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_hidden=1.0, lr_scheduler_type="linear")
    trainer.train()
    assert trainer.projection_optimizer.param_groups[0]["lr"] == 0.0  # the first schedule ran to its end
    before = clone_state(trainer.projections)
    trainer.train()
    assert len(changed(before, trainer.projections)) == len(before)


def _run(tmp_path, name, teacher_seed=0, **kw):
    teacher = tiny_ctc(seed=teacher_seed)
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
    kw.setdefault("alpha_hidden", 1.0)
    return make_trainer(tmp_path / name, teacher, student, ctc_rows(16), max_steps=4,
                        save_strategy="steps", save_steps=2, per_device_train_batch_size=2, **kw)


def test_resume_restores_projections_and_optimizer_bit_identically(tmp_path):
    full = _run(tmp_path, "full")
    full.train()
    resumed = _run(tmp_path, "resumed")
    # the resumed run starts from the uninterrupted run's step-2 checkpoint
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "out" / "checkpoint-2"))
    for key, value in full.projections.state_dict().items():
        assert torch.equal(value, resumed.projections.state_dict()[key]), key
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    opt_full = torch.load(tmp_path / "full/out/checkpoint-4/optimizer.pt", weights_only=True)
    opt_res = torch.load(tmp_path / "resumed/out/checkpoint-4/optimizer.pt", weights_only=True)
    for index, state in opt_full["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, opt_res["state"][index][name]), (index, name)
    proj_full = torch.load(tmp_path / "full/out/checkpoint-4/projections_optimizer.pt", weights_only=True)
    proj_res = torch.load(tmp_path / "resumed/out/checkpoint-4/projections_optimizer.pt", weights_only=True)
    assert proj_full["scheduler"] == proj_res["scheduler"] and proj_full["optimizer"]["state"]
    for index, state in proj_full["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, proj_res["optimizer"]["state"][index][name]), (index, name)
    tail = lambda t: [e["loss"] for e in t.state.log_history if "loss" in e][-2:]  # noqa: E731
    assert tail(full) == pytest.approx(tail(resumed), abs=1e-5)


def test_checkpoints_hold_projections_but_the_exported_student_does_not(tmp_path):
    trainer = _run(tmp_path, "run")
    trainer.train()
    checkpoint = tmp_path / "run/out/checkpoint-4"
    saved = load_file(str(checkpoint / PROJECTIONS_FILE))
    assert set(saved) == set(trainer.projections.state_dict())
    assert not any("_to_" in k for k in load_file(str(checkpoint / "model.safetensors")))
    trainer.save_model(str(tmp_path / "export"))
    exported = load_file(str(tmp_path / "export/model.safetensors"))
    assert not any("_to_" in k for k in exported)
    assert not (tmp_path / "export" / PROJECTIONS_FILE).exists()
    reloaded, info = Wav2Vec2ForCTC.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_resume_without_projections_file_is_refused(tmp_path):
    trainer = _run(tmp_path, "run")
    trainer.train()
    (tmp_path / "run/out/checkpoint-2" / PROJECTIONS_FILE).unlink()
    again = _run(tmp_path, "again")
    with pytest.raises(ValueError, match="no projections.safetensors"):
        again.train(resume_from_checkpoint=str(tmp_path / "run/out/checkpoint-2"))


def test_layerdrop_student_is_refused_for_hidden_distillation(tmp_path):
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, layerdrop=0.1)
    with pytest.raises(ValueError, match=r"layerdrop=0.1.*student.config.layerdrop = 0.0"):
        make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_hidden=1.0)
