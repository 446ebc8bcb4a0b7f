import json

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects

from conftest import ctc_processor, ctc_rows, tiny_ctc
from helpers import make_args
from hf_asr_distill import DistillationTrainer, collator_for, make_student
from hf_asr_distill.cli import main
from hf_asr_distill.evaluation import ModelResult, write_report
from hf_asr_distill.model_card import UPLOAD_PATTERNS, build_model_card


def fake_results():
    def row(name, wer, latency, params):
        return ModelResult(name=name, params={"total": params}, size_bytes={"fp32": 4 * params, "fp16": 2 * params},
                           scores={"wer": wer, "cer": wer / 2, "runaway": 0}, latency_ms=latency, rtfx=100 / latency,
                           peak_memory_mb=1.0, batch_size=8, speedup=40.0 / latency)
    return [row("teacher", 0.08, 40.0, 37_800_000), row("student", 0.095, 20.0, 29_000_000)]


def test_card_round_trips_through_the_hub_parser(tmp_path):
    student, _ = make_student(tiny_ctc(), num_hidden_layers=2)
    card = build_model_card("me/tiny-distil", "org/teacher", {"alpha_ce": 0.8, "alpha_kd": 1.0, "alpha_hidden": 1.0,
                                                              "kd_loss": "kl", "temperature": 2.0},
                            student.config, fake_results(), {"utterances": 200}, eval_dataset="org/speech",
                            steps=5000)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.base_model == "org/teacher"
    metrics = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    assert metrics == {"wer": 9.5, "cer": 4.75}
    assert loaded.data.eval_results[0].dataset_type == "org/speech"
    text = loaded.text
    assert "| student | pytorch | 29.0 |" in text and "2.00x" in text and "`0.8 * hard-label + 1.0 * kl" in text
    assert '"encoder": {"0": 0, "1": 3}' in text and "| training steps | 5000 |" in text


def test_push_uploads_the_student_only(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw))
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2, hidden_size=16)
    processor = ctc_processor(tmp_path)
    args = make_args(tmp_path, alpha_hidden=1.0, save_strategy="steps", save_steps=2, max_steps=2,
                     hub_model_id="me/tiny-distil", hub_token="hf_SECRETSECRET")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                                  train_dataset=ctc_rows(), data_collator=collator_for(processor, student))
    trainer.train()
    trainer.push_to_hub()
    out = tmp_path / "out"
    assert calls["repo"] == "me/tiny-distil" and calls["upload"]["folder_path"] == str(out)
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    uploaded = set(filter_repo_objects(files, allow_patterns=calls["upload"]["allow_patterns"],
                                       ignore_patterns=calls["upload"]["ignore_patterns"]))
    assert {"model.safetensors", "config.json", "README.md", "processor_config.json", "distillation.json",
            "vocab.json"} <= uploaded
    assert not any("checkpoint" in f or "projections" in f or "training_args" in f for f in uploaded)
    assert "checkpoint-2/projections.safetensors" in files  # kept locally for resuming
    for path in out.rglob("*"):  # the token never reaches disk, not even pickled training arguments
        if path.is_file():
            assert b"hf_SECRETSECRET" not in path.read_bytes(), path
    assert json.loads((out / "distillation.json").read_text())["layer_maps"] == {"encoder": {"1": 1, "2": 4}}


def test_push_command_renders_card_from_report(tmp_path, capsys):
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2)
    student.save_pretrained(tmp_path / "student")
    write_report(fake_results(), tmp_path / "student" / "report", meta={"utterances": 12})
    main(["push", "--student", str(tmp_path / "student"), "--repo_id", "me/s", "--teacher", "org/t",
          "--eval_dataset", "org/speech", "--dry_run", "true"])
    card = ModelCard.load(tmp_path / "student" / "README.md")
    assert {r.metric_type for r in card.data.eval_results} == {"wer", "cer"}
    assert "![accuracy vs speed](report.png)" in card.text and (tmp_path / "student" / "report.png").exists()
    assert set(UPLOAD_PATTERNS) >= {"README.md", "report.png"}


def test_local_paths_stay_out_of_the_hub_metadata(tmp_path):
    student, _ = make_student(tiny_ctc(), num_hidden_layers=2)
    card = build_model_card("me/s", str(tmp_path), {}, student.config, fake_results(), {"dataset": str(tmp_path)})
    assert card.data.base_model is None and card.data.datasets is None
    assert f"`{tmp_path.name}`" in card.text


def test_card_from_a_folder_without_a_recipe_never_prints_none(tmp_path, capsys):
    student, _ = make_student(tiny_ctc(), num_hidden_layers=2)
    student.save_pretrained(tmp_path / "student")  # no distillation.json, no report
    main(["push", "--student", str(tmp_path / "student"), "--repo_id", "me/s", "--teacher", "org/t",
          "--dry_run", "true"])
    text = (tmp_path / "student" / "README.md").read_text()
    assert "None" not in text and "not recorded" in text
    assert "No evaluation report was attached" in text


def test_multilingual_card_lists_languages_and_wer_per_language(tmp_path):
    student, _ = make_student(tiny_ctc(), num_hidden_layers=2)
    results = fake_results()
    for r, (de, es) in zip(results, ((0.1, 0.2), (0.15, 0.3))):
        r.scores["per_language"] = {"de": {"wer": de, "cer": de / 2}, "es": {"wer": es, "cer": es / 2}}
    meta = {"utterances": 20, "languages": ["de", "es"],
            "long_form": {"rows": 2, "method": "Whisper's sequential long-form generation"}}
    card = build_model_card("me/s", "org/t", {"alpha_ce": 0.8, "alpha_kd": 1.0, "language": None}, student.config,
                            results, meta)
    assert card.data.language == ["de", "es"]
    assert "| student | 15.00 (7.50) | 30.00 (15.00) |" in card.text
    assert "2 recordings longer than the training window were decoded with Whisper's sequential" in card.text
    assert "None" not in card.text
