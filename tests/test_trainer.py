import pytest
import torch
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration

from conftest import ctc_rows, tiny_ctc, tiny_whisper, whisper_features, whisper_rows
from helpers import changed, clone_state, make_trainer
from hf_asr_distill import collator_for, make_student


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


@pytest.mark.parametrize("family", ["whisper", "ctc"])
def test_training_updates_student_only_and_logs_each_term(tmp_path, family):
    if family == "whisper":
        teacher, rows, shrink = tiny_whisper(), whisper_rows(), {"decoder_layers": 2}
    else:
        teacher, rows, shrink = tiny_ctc(), ctc_rows(), {"num_hidden_layers": 2}
    student, _ = make_student(teacher, **shrink)
    teacher_before, student_before = clone_state(teacher), clone_state(student)
    trainer = make_trainer(tmp_path, teacher, student, rows)
    trainer.train()
    assert changed(student_before, student), "student weights did not move"
    assert not changed(teacher_before, trainer.teacher), "teacher weights moved"
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    assert len(logged(trainer, "loss_ce")) == 3 and len(logged(trainer, "loss_kd")) == 3
    assert all(v > 0 for v in logged(trainer, "loss_kd"))
    # the logged total is the weighted sum of the logged terms
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(0.8 * first["loss_ce"] + 1.0 * first["loss_kd"], rel=1e-3)


def test_kd_term_is_zero_when_student_equals_teacher(tmp_path):
    teacher = tiny_whisper()
    student, _ = make_student(teacher, decoder_layers=4)  # an exact copy
    trainer = make_trainer(tmp_path, teacher, student, whisper_rows(), alpha_ce=0.0, learning_rate=1e-9, max_steps=1)
    trainer.train()
    assert logged(trainer, "loss_kd")[0] == pytest.approx(0.0, abs=1e-6)


def test_vocab_mismatch_is_refused_with_both_sizes(tmp_path):
    teacher = tiny_whisper()
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "vocab_size": 65})
    student = WhisperForConditionalGeneration(config)
    with pytest.raises(ValueError, match="teacher vocab 64 != student vocab 65"):
        make_trainer(tmp_path, teacher, student, whisper_rows())


def test_family_mismatch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Teacher is a whisper model but the student is a ctc model"):
        make_trainer(tmp_path, tiny_whisper(), tiny_ctc(), ctc_rows())


def test_teacher_loaded_from_path_in_requested_dtype(tmp_path):
    teacher = tiny_whisper()
    teacher.save_pretrained(tmp_path / "teacher")
    student, _ = make_student(teacher, decoder_layers=2)
    trainer = make_trainer(tmp_path, str(tmp_path / "teacher"), student, whisper_rows(), teacher_dtype="bf16")
    assert trainer.teacher.dtype == torch.bfloat16
    trainer.train()
    assert all(torch.isfinite(torch.tensor(v)) for v in logged(trainer, "loss_kd"))


def test_saved_student_reloads_identically_without_teacher_weights(tmp_path):
    teacher = tiny_whisper()
    student, _ = make_student(teacher, decoder_layers=2)
    trainer = make_trainer(tmp_path, teacher, student, whisper_rows(), max_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    keys = set(load_file(str(tmp_path / "student" / "model.safetensors")))
    assert not any(k.startswith("model.decoder.layers.2") or k.startswith("model.decoder.layers.3") for k in keys)
    assert keys <= set(student.state_dict())
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "student").eval()
    student.eval()
    feats = torch.randn(2, 8, 32)
    dec = torch.tensor([[2, 5, 6], [2, 7, 8]])
    with torch.no_grad():
        assert torch.equal(student(feats, decoder_input_ids=dec).logits, reloaded(feats, decoder_input_ids=dec).logits)


def test_frozen_identical_encoder_is_shared_and_gives_the_same_loss(tmp_path):
    teacher = tiny_whisper()
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    shared = make_trainer(tmp_path, teacher, student, whisper_rows())
    assert shared.share_encoder
    unshared = make_trainer(tmp_path, teacher, student, whisper_rows(), share_frozen_encoder=False)
    assert not unshared.share_encoder
    batch = collator_for(whisper_features(), student)(whisper_rows()[:4])
    student.train()
    assert shared.compute_loss(student, batch).item() == pytest.approx(unshared.compute_loss(student, batch).item(),
                                                                        rel=1e-6)
    trainable, _ = make_student(teacher, decoder_layers=2)
    assert not make_trainer(tmp_path, teacher, trainable, whisper_rows()).share_encoder


def test_teacher_forward_runs_once_per_step_and_encoder_is_skipped_when_shared(tmp_path):
    teacher = tiny_whisper()
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    trainer = make_trainer(tmp_path, teacher, student, whisper_rows(), max_steps=2)
    calls = {"teacher": 0, "teacher_encoder": 0}
    trainer.teacher.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    trainer.teacher.model.encoder.register_forward_hook(
        lambda *a: calls.__setitem__("teacher_encoder", calls["teacher_encoder"] + 1))
    trainer.train()
    assert calls == {"teacher": 2, "teacher_encoder": 0}


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """Token-level terms are normalised over the whole accumulated batch, so 2 x 2 equals 1 x 4 exactly."""
    rows = whisper_rows(4)
    results = []
    for batch, accum in ((4, 1), (2, 2)):
        teacher = tiny_whisper()
        student, _ = make_student(teacher, decoder_layers=2)
        trainer = make_trainer(tmp_path, teacher, student, rows, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accum, max_steps=1, optim="sgd", learning_rate=0.5)
        trainer.train()
        results.append((clone_state(student), trainer.state.log_history[0]["loss"]))
    (full, loss_full), (accumulated, loss_acc) = results
    assert loss_full == pytest.approx(loss_acc, rel=1e-5)
    for key in full:
        assert torch.allclose(full[key], accumulated[key], atol=1e-6), key


def test_ctc_kd_ignores_padded_frames(tmp_path):
    teacher, student = tiny_ctc(), tiny_ctc(num_hidden_layers=2, seed=1)
    trainer = make_trainer(tmp_path, teacher, student, ctc_rows(), alpha_ce=0.0, alpha_hidden=1.0)
    audio = torch.randn(1, 1600)
    labels = torch.tensor([[1, 2, 3]])
    alone = {"input_values": audio, "attention_mask": torch.ones(1, 1600, dtype=torch.long), "labels": labels}
    padded = {"input_values": torch.cat([audio, torch.zeros(1, 800)], 1),
              "attention_mask": torch.cat([torch.ones(1, 1600), torch.zeros(1, 800)], 1).long(), "labels": labels}
    student.eval()
    trainer.compute_loss(student, alone)
    trainer.compute_loss(student, padded)
    kd = trainer._metrics["eval"]["loss_kd"]
    hidden = trainer._metrics["eval"]["loss_hidden"]
    assert kd[0].item() > 1e-3
    assert kd[0].item() == pytest.approx(kd[1].item(), rel=1e-4)
    assert hidden[0].item() == pytest.approx(hidden[1].item(), rel=1e-4)
