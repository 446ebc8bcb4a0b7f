import json

import pytest
import yaml
from safetensors.torch import load_file

from conftest import ctc_processor, tiny_ctc, write_corpus
from hf_asr_distill.cli import COMMANDS, DataArguments, _parse, main
from hf_asr_distill.config import DistillationConfig


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"hf-asr-distill {command}" in capsys.readouterr().out


def test_top_level_help_and_unknown_command(capsys):
    main(["--help"])
    assert "create-student" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown command 'fly'"):
        main(["fly"])


def test_unknown_flags_are_errors_and_booleans_parse():
    with pytest.raises(SystemExit, match="not_a_flag"):
        _parse((DistillationConfig,), ["--output_dir", "x", "--not_a_flag", "1"])
    with pytest.raises(SystemExit, match="choose one of kl, soft_ce"):
        _parse((DistillationConfig,), ["--output_dir", "x", "--kd_loss", "mse"])
    (args,) = _parse((DistillationConfig,), ["--output_dir", "x", "--push_to_hub", "False", "--report_to", "none",
                                             "--share_frozen_encoder", "false"])
    assert args.push_to_hub is False and args.share_frozen_encoder is False


def test_config_file_gives_defaults_and_flags_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "o", "temperature": 3.0, "decoder_layer_map": {1: 4},
                                    "report_to": "none", "dataset": "d"}))
    config, data = _parse((DistillationConfig, DataArguments), ["--config", str(path), "--temperature", "4"])
    assert config.temperature == 4.0 and config.decoder_layer_map == {1: 4} and data.dataset == "d"
    path.write_text(json.dumps({"output_dir": "o", "temprature": 3}))
    with pytest.raises(SystemExit, match=r"unknown option\(s\) \['temprature'\]"):
        _parse((DistillationConfig,), ["--config", str(path)])


@pytest.fixture
def saved_teacher(tmp_path):
    teacher = tiny_ctc(num_hidden_layers=4)
    teacher.save_pretrained(tmp_path / "teacher")
    ctc_processor(tmp_path).save_pretrained(tmp_path / "teacher")
    write_corpus(tmp_path / "corpus" / "train", n=8)
    write_corpus(tmp_path / "corpus" / "test", n=4, seed=1)
    return tmp_path


def test_create_student_distill_and_evaluate_end_to_end(saved_teacher, capsys):
    root = saved_teacher
    main(["create-student", "--teacher", str(root / "teacher"), "--num_hidden_layers", "2",
          "--output_dir", str(root / "small")])
    assert '"encoder": {"0": 0, "1": 3}' in capsys.readouterr().out
    main(["distill", "--teacher", str(root / "teacher"), "--student", str(root / "small"),
          "--dataset", str(root / "corpus"), "--eval_split", "test", "--output_dir", str(root / "run"),
          "--max_steps", "2", "--per_device_train_batch_size", "4", "--alpha_hidden", "1.0",
          "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"])
    out = capsys.readouterr().out
    assert "| student |" in out and (root / "run" / "report" / "report.json").exists()
    assert not any("_to_" in k for k in load_file(str(root / "run" / "model.safetensors")))
    main(["evaluate", "--teacher", str(root / "teacher"), "--student", str(root / "run"), str(root / "small"),
          "--dataset", str(root / "corpus"), "--output_dir", str(root / "eval"), "--batch_size", "2",
          "--repeats", "1"])
    names = [r["name"] for r in json.loads((root / "eval" / "report.json").read_text())["results"]]
    assert names == ["teacher", "run", "small"]


@pytest.mark.parametrize("name,hidden", [("distill_whisper.yaml", 0.0), ("distill_ctc.yaml", 1.0)])
def test_example_configs_parse(name, hidden):
    from pathlib import Path

    from hf_asr_distill.cli import StudentArguments, TeacherArguments

    path = Path(__file__).resolve().parent.parent / "examples" / name
    teacher, student, data, config = _parse((TeacherArguments, StudentArguments, DataArguments, DistillationConfig),
                                            ["--config", str(path)])
    assert teacher.teacher and data.dataset and config.alpha_hidden == hidden and config.alpha_kd == 1.0
    assert student.shrink() and (config.hidden_layer_map or not hidden)


def test_pseudo_label_cache_and_distill_from_the_cache(saved_teacher, capsys):
    root = saved_teacher
    main(["pseudo-label", "--teacher", str(root / "teacher"), "--dataset", str(root / "corpus"),
          "--output_dir", str(root / "pl"), "--batch_size", "4", "--max_wer", "none"])
    assert "kept 8 of 8 rows" in capsys.readouterr().out
    from datasets import load_from_disk

    assert "pseudo_text" in load_from_disk(str(root / "pl" / "dataset")).column_names
    main(["cache-teacher", "--teacher", str(root / "teacher"), "--dataset", str(root / "corpus"),
          "--output_dir", str(root / "cache"), "--k", "4", "--hidden_layers", '{"encoder": [2, 4]}'])
    assert "cache complete" in capsys.readouterr().out
    main(["distill", "--teacher", str(root / "teacher"), "--num_hidden_layers", "2", "--dataset",
          str(root / "corpus"), "--teacher_cache", str(root / "cache"), "--output_dir", str(root / "run"),
          "--max_steps", "2", "--alpha_hidden", "1", "--hidden_layer_map", '{"1": 2, "2": 4}', "--report_to",
          "none", "--save_strategy", "no", "--disable_tqdm", "true", "--per_device_train_batch_size", "4"])
    assert json.loads((root / "run" / "distillation.json").read_text())["steps"] == 2


def test_evaluate_passes_anti_repetition_settings():
    from hf_asr_distill.cli import EvalArguments, TeacherArguments

    _, args = _parse((TeacherArguments, EvalArguments), ["--teacher", "t", "--student", "s", "--dataset", "d",
                                                         "--no_repeat_ngram_size", "3"])
    assert args.generate_kwargs() == {"no_repeat_ngram_size": 3}
    _, plain = _parse((TeacherArguments, EvalArguments), ["--teacher", "t", "--student", "s", "--dataset", "d"])
    assert plain.generate_kwargs() == {}
