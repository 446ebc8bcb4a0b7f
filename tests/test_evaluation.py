import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from conftest import ctc_processor, tiny_ctc, write_corpus
from hf_asr_distill import collator_for, make_student
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.evaluation import (
    ModelResult,
    asr_scores, compare, count_parameters, evaluate_model, load_metric, max_new_tokens_for, size_on_disk,
    text_normalizer, wer_metrics, write_report,
)


def test_packaged_metrics_work_offline_and_accept_empty_strings():
    wer = load_metric("wer")
    assert wer.compute(predictions=["a b c"], references=["a b d"])["wer"] == pytest.approx(1 / 3)
    out = wer.compute(predictions=["", "x y"], references=["p q", ""], detailed=True)
    assert (out["deletions"], out["insertions"], out["substitutions"]) == (2, 2, 0)
    assert out["wer"] == pytest.approx(2.0)
    assert wer.compute(predictions=[""], references=[""])["wer"] == 0.0
    assert load_metric("cer").compute(predictions=["abd"], references=["abc"])["cer"] == pytest.approx(1 / 3)


def test_scores_on_normalised_and_orthographic_text():
    scores = asr_scores([" Hello, World!", "ten dollars"], ["hello world", "$10"])
    assert scores["wer"] == 0.0  # the English normaliser removes case, punctuation, and spells out numbers
    assert scores["wer_ortho"] > 0.5
    basic = text_normalizer(english=False)
    assert basic("Hello, World!").split() == ["hello", "world"]


def test_runaway_outputs_are_counted():
    looping = "you " * 40
    scores = asr_scores([looping, "a cat sat", "a b c d e f g h i j k"], ["hi there", "a cat sat", "a b c d"])
    assert scores["runaway"] == 1
    assert scores["insertions"] >= 38


def test_wer_metrics_for_ctc_decodes_logits(tmp_path):
    processor = ctc_processor(tmp_path)
    tok = processor.tokenizer
    labels = np.array([tok("abc de").input_ids + [-100] * 2])
    ids = [tok.convert_tokens_to_ids(c) for c in "aabbc|ddee"]
    logits = np.full((1, len(ids), 12), -5.0)
    logits[0, np.arange(len(ids)), ids] = 5.0
    metrics = wer_metrics(processor)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["wer"] == 0.0 and metrics["utterances"] == 1


def test_wer_metrics_for_whisper_decodes_generated_ids():
    class WhisperTokenizerStub:  # the name marks it as a Whisper tokenizer
        pad_token_id = 0
        english_spelling_normalizer = {}

        def batch_decode(self, ids, skip_special_tokens=True):
            words = {1: "the", 2: "cat", 3: "sat"}
            return [" ".join(words[i] for i in row if i in words) for row in np.asarray(ids).tolist()]

    compute = wer_metrics(SimpleNamespace(tokenizer=WhisperTokenizerStub()))
    out = compute(EvalPrediction(predictions=np.array([[1, 2, -100]]), label_ids=np.array([[1, 2, 3]])))
    assert out["wer"] == pytest.approx(1 / 3)


def test_parameters_and_size():
    model = tiny_ctc()
    params = count_parameters(model)
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["feature_encoder"] + params["transformer"] + params["head"] <= params["total"]
    size = size_on_disk(model)
    assert size["fp32"] > 4 * params["total"] and abs(size["fp16"] - size["fp32"] / 2) < 0.05 * size["fp32"]


def test_size_measurement_shows_no_progress_bar_of_its_own(capsys):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    size_on_disk(tiny_ctc())  # a temporary save: not the user's progress
    assert "Writing model shards" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # left as it was


def test_max_new_tokens_grows_with_audio_and_is_capped():
    assert max_new_tokens_for(1.0) < max_new_tokens_for(10.0) <= 440
    assert max_new_tokens_for(1000.0) == 440


def test_report_on_tiny_models(tmp_path):
    processor = ctc_processor(tmp_path)
    teacher = tiny_ctc(num_hidden_layers=4)
    student, _ = make_student(teacher, num_hidden_layers=1)
    ds, _ = prepare_dataset(load_speech_dataset(str(write_corpus(tmp_path / "c", n=4))), processor, teacher)
    results = compare([evaluate_model(name, m, processor, ds, batch_size=2, repeats=2, progress=False)
                       for name, m in (("teacher", teacher), ("student", student))])
    teacher_r, student_r = results
    assert teacher_r.speedup == 1.0
    assert student_r.speedup == pytest.approx(teacher_r.latency_ms / student_r.latency_ms)
    assert student_r.params["total"] < teacher_r.params["total"]
    assert len(student_r.predictions) == 4
    audio = sum(ds[i]["audio_seconds"] for i in range(4))
    assert teacher_r.rtfx == pytest.approx(audio / (teacher_r.latency_ms * 4 / 1000), rel=1e-6)
    paths = write_report(results, tmp_path / "report", meta={"dataset": "tiny"})
    payload = json.loads(paths["json"].read_text())
    assert [r["name"] for r in payload["results"]] == ["teacher", "student"]
    assert "| student |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_frame_mask_marks_only_audio_frames():
    from hf_asr_distill.families import CTCFamily

    model, family = tiny_ctc(), CTCFamily()
    mask = torch.zeros(2, 1000, dtype=torch.long)
    mask[0, :1000], mask[1, :400] = 1, 1
    values = torch.zeros(2, 1000)
    valid = family.positions(model, {"input_values": values, "attention_mask": mask})  # 62 frames for 1,000 samples
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(400)))
    assert valid[0].all() and valid[1].tolist() == [True] * frames + [False] * (62 - frames)
    assert family.positions(model, {"input_values": values}).shape == (2, 62)
    assert family.positions(model, {"input_values": values}).all()


def test_ctc_transcription_of_a_padded_row_equals_it_alone(tmp_path):
    from hf_asr_distill.evaluation import transcribe_batch

    processor, model = ctc_processor(tmp_path), tiny_ctc()
    rng = np.random.default_rng(0)
    short, long = rng.standard_normal(1600).astype(np.float32), rng.standard_normal(4000).astype(np.float32)
    collate = collator_for(processor, model)
    alone = transcribe_batch(model, processor, collate([{"input_values": short}]))
    padded = transcribe_batch(model, processor, collate([{"input_values": long}, {"input_values": short}]))
    assert padded[1] == alone[0]


def test_report_without_matplotlib_writes_the_table_and_says_how_to_get_the_chart(tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    results = [ModelResult(name="teacher", params={"total": 10}, size_bytes={"fp32": 40, "fp16": 20},
                           scores={"wer": 0.1, "cer": 0.05, "runaway": 0}, latency_ms=5.0, rtfx=100.0,
                           peak_memory_mb=1.0, batch_size=2)]
    paths = write_report(results, tmp_path / "report")
    assert set(paths) == {"json", "md"} and not (tmp_path / "report" / "report.png").exists()
    assert "| teacher |" in paths["md"].read_text()
    assert "pip install 'hf-asr-distill[plots]'" in caplog.text
