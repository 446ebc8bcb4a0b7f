"""Deployment forms: CTranslate2 (faster-whisper), ONNX, int8; parity with PyTorch; measured side by side; and the
student as the teacher's assistant in speculative decoding."""

import json
import sys

import numpy as np
import pytest
import torch

from conftest import ctc_processor, tiny_ctc, tiny_real_whisper, whisper_processor, write_corpus
from hf_asr_distill import collator_for, make_student
from hf_asr_distill.cli import main
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.evaluation import compare, evaluate_model
from hf_asr_distill.evaluation.speculative import assisted_decoding
from hf_asr_distill.export import Deployed, deploy, export_model, parity_check


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    processor = whisper_processor(root / "tok")
    teacher = tiny_real_whisper(processor)
    ds, _ = prepare_dataset(load_speech_dataset(str(write_corpus(root / "c", n=6))), processor, teacher)
    return processor, teacher, ds, collator_for(processor, teacher)([ds[i] for i in range(2)])


@pytest.fixture(scope="module")
def ctc(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctc")
    processor, model = ctc_processor(root), tiny_ctc()
    ds, _ = prepare_dataset(load_speech_dataset(str(write_corpus(root / "c", n=6))), processor, model)
    return processor, model, ds, collator_for(processor, model)([ds[i] for i in range(2)])


@pytest.mark.parametrize("form", ["pytorch", "pytorch-int8", "ct2-float32", "ct2-int8", "onnx", "onnx-int8"])
def test_whisper_forms_load_back_and_full_precision_ones_match_pytorch(tmp_path, whisper, form):
    processor, teacher, ds, batch = whisper
    deployed = deploy(teacher, processor, tmp_path / form, form, example_batch=batch)
    result = parity_check(teacher, deployed, processor, ds)
    assert result["utterances"] == 6 and result["ok"]
    if form in ("pytorch", "pytorch-int8", "ct2-float32", "onnx"):
        assert result["identical"] == 6, result  # the same greedy transcripts as generate()
    assert deployed.size_bytes() > 0 and json.loads((tmp_path / form / "deployment.json").read_text())["form"] == form


def test_ct2_folder_is_what_faster_whisper_loads(tmp_path):
    import faster_whisper

    from conftest import multilingual_processor, stock_whisper

    # faster-whisper needs a real Whisper tokenizer (all of Whisper's special tokens): whisper-base's, sizes shrunk
    processor = multilingual_processor(tmp_path / "tok")
    student, _ = make_student(stock_whisper(decoder_layers=4), decoder_layers=2)
    folder = export_model(student, processor, tmp_path / "ct2", "ct2-int8")
    model = faster_whisper.WhisperModel(str(folder), device="cpu", compute_type="int8")
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    segments, info = model.transcribe(audio, beam_size=1, language="de", without_timestamps=True, word_timestamps=True)
    list(segments)  # decodes, word timestamps included (an untrained model's text is noise)
    assert info.language == "de" and info.duration == pytest.approx(1.0)
    detected = model.detect_language(audio)  # the student's language tokens reached the converted model
    assert len(detected[2]) == 99


@pytest.mark.parametrize("form", ["pytorch-int8", "onnx", "onnx-int8"])
def test_ctc_forms(tmp_path, ctc, form):
    processor, model, ds, batch = ctc
    result = parity_check(model, deploy(model, processor, tmp_path / form, form, example_batch=batch), processor, ds)
    assert result["ok"] and (form != "onnx" or result["identical"] == 6)


def test_a_checkpoint_saved_in_half_precision_exports_to_int8(tmp_path, ctc):
    processor, model, ds, batch = ctc
    model.half().save_pretrained(tmp_path / "half")  # as the demo's shipped teacher is stored
    processor.save_pretrained(tmp_path / "half")
    deployed = deploy(str(tmp_path / "half"), processor, tmp_path / "int8", "pytorch-int8")
    assert len(deployed.transcribe(processor, batch)) == 2
    deploy(model, processor, tmp_path / "int8-from-memory", "pytorch-int8")  # an fp16 model in memory
    assert model.dtype == torch.float16  # exported from a copy: the caller's model is left as it was
    model.float()


def test_unavailable_forms_are_refused_with_the_reason(tmp_path, ctc, monkeypatch):
    processor, model, _, batch = ctc
    with pytest.raises(ValueError, match="CTranslate2 exports are for Whisper models, not CTC models"):
        export_model(model, processor, tmp_path / "x", "ct2-int8")
    with pytest.raises(ValueError, match="Unknown form 'tflite'"):
        export_model(model, processor, tmp_path / "x", "tflite")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"needs onnx: pip install 'hf-asr-distill\[export\]'"):
        export_model(model, processor, tmp_path / "y", "onnx", example_batch=batch)


def test_parity_check_flags_a_form_that_got_worse(tmp_path, whisper, monkeypatch):
    processor, teacher, ds, batch = whisper
    deployed = deploy(teacher, processor, tmp_path / "ct2", "ct2-float32", example_batch=batch)
    references = [ds[i]["text"] for i in range(6)]
    monkeypatch.setattr(Deployed, "transcribe", lambda self, p, b, g=None: ["completely wrong words here"] * len(
        b["input_features"]))
    monkeypatch.setattr("hf_asr_distill.export.family_of", lambda model: type(
        "F", (), {"transcribe": staticmethod(lambda m, p, b, g=None: references[:len(b["input_features"])])})())
    result = parity_check(teacher, deployed, processor, ds, batch_size=6)
    assert not result["ok"] and result["wer_delta"] > 0.5 and result["wer_pytorch"] == 0.0


def test_forms_are_measured_side_by_side_with_speed_up_per_form(tmp_path, whisper):
    processor, teacher, ds, batch = whisper
    student, _ = make_student(teacher, decoder_layers=2)
    results = []
    for form in ("pytorch", "ct2-int8"):
        for name, model in (("teacher", teacher), ("student", student)):
            runner = model if form == "pytorch" else deploy(model, processor, tmp_path / f"{name}-{form}", form,
                                                            example_batch=batch)
            results.append(evaluate_model(f"{name} ({form})", runner, processor, ds, batch_size=3, warmup=0,
                                          repeats=1, progress=False))
    compare(results)
    by_name = {r.name: r for r in results}
    assert by_name["teacher (ct2-int8)"].speedup == 1.0 and by_name["teacher (pytorch)"].speedup == 1.0
    student_ct2 = by_name["student (ct2-int8)"]
    assert student_ct2.form == "ct2-int8" and student_ct2.latency_b1_ms > 0
    assert student_ct2.speedup == pytest.approx(by_name["teacher (ct2-int8)"].latency_ms / student_ct2.latency_ms)
    assert student_ct2.size_bytes["disk"] < by_name["student (pytorch)"].size_bytes["disk"]  # int8 weights


def test_evaluate_command_with_formats_and_the_assistant(tmp_path, whisper, capsys):
    processor, teacher, ds, _ = whisper
    teacher.save_pretrained(tmp_path / "teacher")
    processor.save_pretrained(tmp_path / "teacher")
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    student.save_pretrained(tmp_path / "student")
    write_corpus(tmp_path / "data" / "test", n=4)
    main(["evaluate", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"), "--dataset",
          str(tmp_path / "data"), "--output_dir", str(tmp_path / "report"), "--formats", "pytorch,ct2-int8,onnx",
          "--repeats", "1", "--batch_size", "2", "--assistant", "true"])
    out = capsys.readouterr().out
    payload = json.loads((tmp_path / "report" / "report.json").read_text())
    names = [r["name"] for r in payload["results"]]
    assert names == ["teacher (pytorch)", "student (pytorch)", "teacher (ct2-int8)", "student (ct2-int8)",
                     "teacher (onnx)", "student (onnx)"]
    assert payload["meta"]["parity"]["student (onnx)"]["identical"] == 4
    assert payload["meta"]["speculative"]["identical"] == 4
    assert "Parity with the PyTorch model" in out and "Speculative decoding" in out
    assert (tmp_path / "report" / "deployed" / "student-ct2-int8" / "model.bin").exists()


def test_speculative_decoding_keeps_the_teachers_outputs_and_refuses_mismatched_pairs(whisper):
    processor, teacher, ds, _ = whisper
    shared, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    result = assisted_decoding(teacher, shared, processor, ds)
    assert result["identical"] == 6 and result["assistant"] == "student decoder (shared encoder)"
    own, _ = make_student(teacher, decoder_layers=2, encoder_layers=2)
    assert assisted_decoding(teacher, own, processor, ds, max_rows=2)["assistant"] == "student (own encoder)"
    other = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "vocab_size": teacher.config.vocab_size + 1})
    from transformers import WhisperForConditionalGeneration

    with pytest.raises(ValueError, match="must share the teacher's vocabulary"):
        assisted_decoding(teacher, WhisperForConditionalGeneration(other), processor, ds)
    with pytest.raises(ValueError, match="CTC models decode in one pass"):
        assisted_decoding(tiny_ctc(), tiny_ctc(num_hidden_layers=2), None, ds)


def test_export_command_writes_forms_and_the_parity_report(tmp_path, ctc, capsys):
    processor, model, _, _ = ctc
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    write_corpus(tmp_path / "data" / "test", n=4)
    main(["export", "--model", str(tmp_path / "model"), "--output_dir", str(tmp_path / "out"), "--forms",
          "onnx,pytorch-int8", "--dataset", str(tmp_path / "data")])
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert parity["onnx"]["identical"] == 4 and set(parity) == {"onnx", "pytorch-int8"}
    assert "onnx: " in capsys.readouterr().out and (tmp_path / "out" / "onnx" / "model.onnx").exists()
    assert torch.load(tmp_path / "out" / "pytorch-int8" / "model_int8.pt", weights_only=False)


def test_push_uploads_the_ct2_form_beside_the_checkpoint_and_the_card_says_how_to_run_it(tmp_path, whisper,
                                                                                         monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    processor, teacher, ds, batch = whisper
    student, _ = make_student(teacher, decoder_layers=1)
    folder = tmp_path / "student"
    student.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "distillation.json").write_text(json.dumps({"teacher": "org/t", "recipe": {}, "steps": 3}))
    export_model(student, processor, tmp_path / "out" / "ct2-int8", "ct2-int8")
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw))
    main(["push", "--student", str(folder), "--repo_id", "me/s", "--deployed", str(tmp_path / "out" / "ct2-int8")])
    assert [u.get("path_in_repo") for u in uploads] == [None, "ct2-int8"]
    assert uploads[1]["folder_path"] == str(tmp_path / "out" / "ct2-int8")
    text = ModelCard.load(folder / "README.md").text
    assert 'allow_patterns="ct2-int8/*"' in text and 'compute_type="int8"' in text
    with pytest.raises(ValueError, match="not an exported student"):
        main(["push", "--student", str(folder), "--repo_id", "me/s", "--deployed", str(folder)])


def test_card_carries_forms_parity_and_speculative_decoding(tmp_path, whisper):
    from hf_asr_distill.model_card import build_model_card

    processor, teacher, ds, batch = whisper
    student, _ = make_student(teacher, decoder_layers=1)
    models = {"teacher (pytorch)": teacher, "student (pytorch)": student,
              "student (pytorch-int8)": deploy(student, processor, tmp_path / "s8", "pytorch-int8")}
    results = compare([evaluate_model(n, m, processor, ds, warmup=0, repeats=1, progress=False)
                       for n, m in models.items()])
    from hf_asr_distill.evaluation import parity

    meta = {"utterances": len(ds), **parity(results),
            "speculative": {"assistant": "student", "identical": 6, "utterances": 6, "speedup": 1.5,
                            "teacher_ms": 30.0, "assisted_ms": 20.0}}
    card = build_model_card("me/s", "org/t", {}, student.config, results, meta, student_name="student (pytorch)")
    assert "| student (pytorch-int8) | pytorch-int8 |" in card.text
    assert "| student (pytorch-int8) |" in card.text.split("Parity with the PyTorch model")[1]
    assert "6/6 outputs identical to the teacher's greedy ones, 1.50x" in card.text


def test_a_narrower_student_can_inherit_the_teachers_leading_slices(whisper):
    processor, teacher, ds, batch = whisper
    shape = dict(encoder_layers=1, decoder_layers=1, d_model=teacher.config.d_model // 2,
                 encoder_attention_heads=teacher.config.encoder_attention_heads // 2,
                 decoder_attention_heads=teacher.config.decoder_attention_heads // 2,
                 encoder_ffn_dim=teacher.config.encoder_ffn_dim // 2, decoder_ffn_dim=teacher.config.decoder_ffn_dim // 2)
    fresh, _ = make_student(teacher, **shape)
    sliced, layer_map = make_student(teacher, inherit_width=True, **shape)
    d, ffn = shape["d_model"], shape["encoder_ffn_dim"]
    t_layer = teacher.model.encoder.layers[layer_map["encoder"][0]]
    s_layer = sliced.model.encoder.layers[0]
    assert torch.equal(s_layer.self_attn.q_proj.weight, t_layer.self_attn.q_proj.weight[:d, :d])
    assert torch.equal(s_layer.fc1.weight, t_layer.fc1.weight[:ffn, :d])
    assert torch.equal(sliced.model.decoder.embed_tokens.weight, teacher.model.decoder.embed_tokens.weight[:, :d])
    assert not torch.equal(fresh.model.encoder.layers[0].fc1.weight, t_layer.fc1.weight[:ffn, :d])
    assert sliced.config.d_model == d and sliced(input_features=batch["input_features"],
                                                 labels=batch["labels"]).loss.isfinite()


def test_plan_lists_shapes_with_size_and_latency_per_form(whisper, capsys, tmp_path):
    from hf_asr_distill.plan import parse_shapes, plan_students, plan_table

    processor, teacher, ds, batch = whisper
    with pytest.raises(ValueError, match="name=integer"):
        parse_shapes("encoder_layers=four")
    shapes = parse_shapes("decoder_layers=1; encoder_layers=1,decoder_layers=1")
    assert shapes == [{"decoder_layers": 1}, {"encoder_layers": 1, "decoder_layers": 1}]
    rows = plan_students(teacher, processor, shapes, forms=("pytorch", "pytorch-int8", "ct2-int8"), seconds=1.0,
                         tokens=4, repeats=1)
    assert [r["shape"] for r in rows] == ["teacher", "decoder_layers=1", "encoder_layers=1, decoder_layers=1"]
    assert rows[0]["params_m"] > rows[1]["params_m"] > rows[2]["params_m"]
    for row in rows:
        assert set(row["ms"]) == {"pytorch", "pytorch-int8", "ct2-int8"} and all(v > 0 for v in row["ms"].values())
        assert row["mb"]["ct2-int8"] < row["mb"]["pytorch"]
    table = plan_table(rows)
    assert table.count("\n") == 4 and "| teacher |" in table and "1.00x" in table
    teacher.save_pretrained(tmp_path / "t")
    processor.save_pretrained(tmp_path / "t")
    main(["plan", "--teacher", str(tmp_path / "t"), "--shapes", "decoder_layers=1", "--seconds", "1", "--tokens", "2",
          "--repeats", "1"])
    assert "| decoder_layers=1 |" in capsys.readouterr().out


def test_evaluate_on_cpu_compares_a_half_precision_checkpoint_in_fp32(tmp_path, ctc):
    processor, model, ds, batch = ctc
    model.half().save_pretrained(tmp_path / "teacher")  # the demo's teacher is stored like this
    model.float().save_pretrained(tmp_path / "student")
    processor.save_pretrained(tmp_path / "teacher")
    write_corpus(tmp_path / "data" / "test", n=4)
    main(["evaluate", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"), "--dataset",
          str(tmp_path / "data"), "--output_dir", str(tmp_path / "report"), "--repeats", "1", "--warmup", "0"])
    teacher, student = json.loads((tmp_path / "report" / "report.json").read_text())["results"]
    assert teacher["size_bytes"]["disk"] == student["size_bytes"]["disk"]  # both measured in fp32
