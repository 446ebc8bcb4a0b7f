import pytest

from hf_asr_distill import DistillationConfig


def make(tmp_path, **kw):
    return DistillationConfig(output_dir=str(tmp_path), report_to="none", **kw)


def test_defaults_follow_distil_whisper(tmp_path):
    args = make(tmp_path)
    assert (args.temperature, args.alpha_ce, args.alpha_kd, args.kd_loss) == (2.0, 0.8, 1.0, "kl")
    assert args.alpha_hidden == 0.0 and args.hidden_loss == "mse" and args.projection == "linear"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kd_loss", "kl2", "choose one of kl, soft_ce, reverse_kl, jsd"),
        ("hidden_loss", "huber", "choose one of mse, l1, cosine, l1_cosine"),
        ("projection", "conv", "choose one of linear, mlp, none"),
        ("teacher_dtype", "int8", "choose one of fp32, bf16, fp16"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("alpha_kd", -1.0, "alpha_kd must be >= 0"),
        ("hidden_layer_map", "{bad json", "must be JSON"),
        ("decoder_layer_map", '{"a": 1}', "must be integers"),
        ("projection_learning_rate", 0.0, "projection_learning_rate must be > 0"),
    ],
)
def test_bad_values_fail_at_construction(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **{field: value})


def test_all_zero_weights_refused(tmp_path):
    with pytest.raises(ValueError, match="all 0"):
        make(tmp_path, alpha_ce=0.0, alpha_kd=0.0, alpha_hidden=0.0)


def test_layer_map_from_json(tmp_path):
    args = make(tmp_path, hidden_layer_map='{"1": 4, "2": 12}', decoder_layer_map={"1": 2})
    assert args.hidden_layer_map == {1: 4, 2: 12}
    assert args.decoder_layer_map == {1: 2}


def test_dataloader_workers_are_chosen_for_the_machine(tmp_path, monkeypatch):
    import hf_asr_distill.config as config_module

    assert make(tmp_path).dataloader_num_workers == 0  # this CPU machine: workers would take the training's cores
    assert make(tmp_path, dataloader_num_workers=3).dataloader_num_workers == 3  # asked for: kept
    monkeypatch.setattr(config_module, "has_accelerator", lambda: True)
    monkeypatch.setattr(config_module.os, "cpu_count", lambda: 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert config_module.auto_workers() == 4  # 32 cores shared by 8 GPU processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert config_module.auto_workers() == 8 and config_module.auto_workers(use_cpu=True) == 0
