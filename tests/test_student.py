import pytest
import torch

from conftest import tiny_ctc, tiny_whisper
from hf_asr_distill import make_student
from hf_asr_distill.student import spaced_layers


def test_spaced_layers_keep_first_and_last():
    assert spaced_layers(32, 2) == [0, 31]
    assert spaced_layers(4, 2) == [0, 3]
    assert spaced_layers(12, 3) == [0, 6, 11]  # round(5.5) = 6 (banker's rounding of numpy)
    with pytest.raises(ValueError, match="between 1 and 4"):
        spaced_layers(4, 5)


def test_whisper_student_copies_spaced_decoder_layers():
    teacher = tiny_whisper()
    student, layer_map = make_student(teacher, decoder_layers=2)
    assert layer_map == {"encoder": {0: 0, 1: 1, 2: 2, 3: 3}, "decoder": {0: 0, 1: 3}}
    assert student.config.decoder_layers == 2 and teacher.config.decoder_layers == 4
    t, s = teacher.state_dict(), student.state_dict()
    for name in ("self_attn.q_proj.weight", "fc2.bias", "encoder_attn.k_proj.weight"):
        assert torch.equal(s[f"model.decoder.layers.0.{name}"], t[f"model.decoder.layers.0.{name}"])
        assert torch.equal(s[f"model.decoder.layers.1.{name}"], t[f"model.decoder.layers.3.{name}"])
        if name.endswith("weight"):  # biases start at zero in every layer
            assert not torch.equal(s[f"model.decoder.layers.1.{name}"], t[f"model.decoder.layers.1.{name}"])
    for key in ("model.decoder.embed_tokens.weight", "model.encoder.conv1.weight", "model.encoder.layers.2.fc1.weight"):
        assert torch.equal(s[key], t[key])
    assert student.config.distillation_layer_map["decoder"] == {"0": 0, "1": 3}


def test_whisper_freeze_encoder():
    student, _ = make_student(tiny_whisper(), decoder_layers=2, freeze_encoder=True)
    assert not any(p.requires_grad for p in student.model.encoder.parameters())
    assert all(p.requires_grad for p in student.model.decoder.parameters())


def test_ctc_student_copies_front_end_and_layers():
    teacher = tiny_ctc()
    student, layer_map = make_student(teacher, num_hidden_layers=2)
    assert layer_map == {"encoder": {0: 0, 1: 3}}
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["wav2vec2.feature_extractor.conv_layers.0.conv.weight"],
                       t["wav2vec2.feature_extractor.conv_layers.0.conv.weight"])
    assert torch.equal(s["wav2vec2.encoder.layers.1.attention.k_proj.weight"],
                       t["wav2vec2.encoder.layers.3.attention.k_proj.weight"])
    assert torch.equal(s["lm_head.weight"], t["lm_head.weight"])


def test_ctc_student_with_smaller_width_keeps_front_end_only():
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16, intermediate_size=32)
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["wav2vec2.feature_extractor.conv_layers.1.conv.weight"],
                       t["wav2vec2.feature_extractor.conv_layers.1.conv.weight"])
    assert s["wav2vec2.encoder.layers.0.attention.k_proj.weight"].shape == (16, 16)


def test_explicit_student_config_and_bad_options():
    teacher = tiny_whisper()
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "decoder_layers": 1})
    student, layer_map = make_student(teacher, student_config=config)
    assert layer_map["decoder"] == {0: 0}
    with pytest.raises(ValueError, match="no field 'decoder_layer'"):
        make_student(teacher, decoder_layer=2)
    with pytest.raises(ValueError, match="either student_config or shrink"):
        make_student(teacher, student_config=config, decoder_layers=2)
    with pytest.raises(ValueError, match="freeze_feature_encoder"):
        make_student(tiny_ctc(), num_hidden_layers=2, freeze_encoder=True)


def test_make_student_from_a_local_path(tmp_path):
    teacher = tiny_whisper()
    teacher.save_pretrained(tmp_path / "teacher")
    student, _ = make_student(str(tmp_path / "teacher"), decoder_layers=2)
    assert torch.equal(student.state_dict()["model.decoder.layers.1.fc1.weight"],
                       teacher.state_dict()["model.decoder.layers.3.fc1.weight"])


def test_chosen_teacher_layers_initialise_the_student():
    teacher = tiny_whisper()
    student, layer_map = make_student(teacher, decoder_layers=2, copy_layers={"decoder": [2, 3]})
    assert layer_map["decoder"] == {0: 2, 1: 3} and student.config.distillation_layer_map["decoder"] == {"0": 2, "1": 3}
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["model.decoder.layers.0.fc1.weight"], t["model.decoder.layers.2.fc1.weight"])
    assert torch.equal(s["model.decoder.layers.1.fc1.weight"], t["model.decoder.layers.3.fc1.weight"])
    with pytest.raises(ValueError, match=r"copy_layers\['decoder'\]=\[3\] must name 2 teacher layers between 0 and 3"):
        make_student(teacher, decoder_layers=2, copy_layers={"decoder": [3]})
