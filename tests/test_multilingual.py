"""Multilingual Whisper as users have it: language and task tokens end to end, timestamps, long audio.

The teacher is openai/whisper-base's configuration with only the sizes shrunk, and its real 51,865-token tokenizer.
"""

import numpy as np
import pytest

import hf_asr_distill.data as data_module
from conftest import multilingual_processor, stock_whisper, tiny_real_whisper, whisper_processor, write_speech_corpus
from helpers import make_args
from hf_asr_distill import DistillationTrainer, collator_for, evaluate_model, make_student, wer_metrics
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.evaluation import asr_scores, report_meta, write_report


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return multilingual_processor(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def labels_only(monkeypatch):
    """Skip log-mel extraction (30 s windows) in tests that read only the labels."""
    from hf_asr_distill.families import WhisperFamily

    monkeypatch.setattr(WhisperFamily, "features", lambda self, processor, audio, rate, long_form=False:
                        {"input_features": [np.zeros((80, 3000), np.float32) for _ in audio]})


@pytest.fixture
def mixed_corpus(tmp_path):
    texts = ["der Hund läuft", "el perro corre", "il cane corre", "pies biegnie", "the dog runs", "die Katze"]
    return write_speech_corpus(tmp_path / "mixed", texts, language=["de", "es", "it", "pl", "en", "de"])


def token(processor, text):
    return processor.tokenizer.convert_tokens_to_ids(text)


def test_labels_teacher_forcing_and_generation_share_the_language_prompt(processor, mixed_corpus, labels_only):
    teacher = stock_whisper()
    ds, _ = prepare_dataset(load_speech_dataset(str(mixed_corpus)), processor, teacher, language_column="language")
    sot, eot = token(processor, "<|startoftranscript|>"), token(processor, "<|endoftext|>")
    transcribe, notimestamps = token(processor, "<|transcribe|>"), token(processor, "<|notimestamps|>")
    for row, code in zip((ds[i] for i in range(len(ds))), ["de", "es", "it", "pl", "en", "de"]):
        assert row["labels"][:4] == [sot, token(processor, f"<|{code}|>"), transcribe, notimestamps]
        assert row["labels"][-1] == eot and row["language"] == code
        assert processor.tokenizer.decode(row["labels"][4:-1]) == " " + row["text"]  # Whisper's leading space
    batch = collator_for(processor, teacher)([ds[i] for i in range(4)])
    assert batch["labels"][:, 0].tolist() == [token(processor, f"<|{c}|>") for c in ("de", "es", "it", "pl")]
    from hf_asr_distill import family_of

    # the family builds the decoder inputs both models are forced on, and the generation options, from the labels
    decoder_inputs = family_of(teacher).model_inputs(teacher, batch)["decoder_input_ids"]
    assert decoder_inputs[:, :3].tolist() == [[sot, token(processor, f"<|{c}|>"), transcribe]
                                              for c in ("de", "es", "it", "pl")]
    options = family_of(teacher).generation_options(teacher, batch)
    assert options == {"language": ["de", "es", "it", "pl"], "task": "transcribe"}


def test_one_language_for_every_row_and_translation(processor, mixed_corpus, labels_only):
    teacher = stock_whisper()
    ds, _ = prepare_dataset(load_speech_dataset(str(mixed_corpus)), processor, teacher, language="German",
                            task="translate")
    assert ds[0]["labels"][1:3] == [token(processor, "<|de|>"), token(processor, "<|translate|>")]


def test_bad_language_settings_fail_before_any_row_is_read(processor, mixed_corpus, tmp_path, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a row was read before the settings were checked")

    monkeypatch.setattr(data_module, "audio_seconds", no_reading)
    raw = load_speech_dataset(str(mixed_corpus))
    teacher = stock_whisper()
    with pytest.raises(ValueError, match="multilingual: every row needs a language token"):
        prepare_dataset(raw, processor, teacher)
    with pytest.raises(ValueError, match="Unknown language 'xx'"):
        prepare_dataset(raw, processor, teacher, language="xx")
    with pytest.raises(ValueError, match=r"holds languages this model does not know: \['klingon'\]"):
        prepare_dataset(raw.map(lambda r, i: {"language": "klingon" if i == 2 else r["language"]}, with_indices=True),
                        processor, teacher, language_column="language")
    with pytest.raises(ValueError, match="task='summarise' is not supported"):
        prepare_dataset(raw, processor, teacher, language="de", task="summarise")
    with pytest.raises(ValueError, match="language_column='lang' is not a column"):
        prepare_dataset(raw, processor, teacher, language_column="lang")
    english_only_processor = whisper_processor(tmp_path / "en")
    english_only = tiny_real_whisper(english_only_processor)
    with pytest.raises(ValueError, match="English-only"):
        prepare_dataset(raw, english_only_processor, english_only, language="en")
    with pytest.raises(ValueError, match="English-only"):
        DistillationTrainer(model=make_student(english_only, decoder_layers=2)[0], teacher_model=english_only,
                            args=make_args(tmp_path, language="de"), train_dataset=[1])


def test_student_generates_in_its_language_and_its_alignment_heads_name_its_layers(processor, tmp_path):
    teacher = stock_whisper(decoder_layers=4)  # alignment heads in decoder layers 2 and 3
    student, layer_map = make_student(teacher, decoder_layers=2)  # copies decoder layers 0 and 3
    assert layer_map["decoder"] == {0: 0, 1: 3}
    config = student.generation_config
    assert config.is_multilingual and config.lang_to_id == teacher.generation_config.lang_to_id
    assert config.alignment_heads == [[1, 1]]  # teacher layer 3, head 1, is student layer 1
    only_uncopied = stock_whisper(decoder_layers=4)
    only_uncopied.generation_config.alignment_heads = [[1, 0], [2, 1]]
    fallback, _ = make_student(only_uncopied, decoder_layers=2)
    assert fallback.generation_config.alignment_heads == [[1, 0], [1, 1]]  # every head of the upper half
    DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, language="es"),
                        train_dataset=[1])
    assert student.generation_config.language == "es"


def test_word_timestamps_from_the_student_through_the_pipeline(processor, tmp_path):
    from transformers import pipeline

    student, _ = make_student(stock_whisper(decoder_layers=4), decoder_layers=2)
    student.save_pretrained(tmp_path / "student")
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path / "student"), tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor, device="cpu")
    audio = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    out = asr(audio, return_timestamps="word",
              generate_kwargs={"language": "de", "min_new_tokens": 3, "max_new_tokens": 4})
    assert out["chunks"], out  # (with the teacher's heads, naming decoder layers 2 and 3, this raised IndexError)
    for chunk in out["chunks"]:
        start, end = chunk["timestamp"]
        assert 0.0 <= start <= end <= 30.0  # an untrained model's words land anywhere in its 30 s window


def test_a_share_of_rows_trains_with_timestamps(processor, tmp_path, labels_only):
    texts = [f"wort {i}" for i in range(24)]
    stamped = [f"<|0.00|> wort {i}<|1.00|>" for i in range(24)]
    folder = write_speech_corpus(tmp_path / "ts", texts, seconds=[0.5] * 24, language=["de"] * 24, ts=stamped)
    teacher = stock_whisper()
    raw = load_speech_dataset(str(folder))

    def with_timestamps(probability, seed=0):
        ds, _ = prepare_dataset(raw, processor, teacher, language="de", timestamp_column="ts",
                                timestamp_probability=probability, seed=seed)
        rows = [ds[i]["labels"] for i in range(len(ds))]
        return [token(processor, "<|notimestamps|>") not in labels for labels in rows], rows

    half, rows = with_timestamps(0.5)
    assert 6 <= sum(half) <= 18 and with_timestamps(0.5)[0] == half  # a share, drawn the same way each time
    assert with_timestamps(0.5, seed=1)[0] != half
    first = rows[half.index(True)]
    assert first[3] == token(processor, "<|0.00|>") and first[-2] == token(processor, "<|1.00|>")
    assert not any(with_timestamps(0.0)[0]) and all(with_timestamps(1.0)[0])


def test_long_audio_is_decoded_long_form_and_training_skips_it(processor, tmp_path, monkeypatch):
    folder = write_speech_corpus(tmp_path / "long", ["kurz", "sehr lang"], seconds=[2.0, 35.0], language=["de", "de"])
    teacher = stock_whisper()
    raw = load_speech_dataset(str(folder))
    train, stats = prepare_dataset(raw, processor, teacher, language="de")
    assert len(train) == 1 and stats.too_long == 1
    test, _ = prepare_dataset(raw, processor, teacher, language="de", long_form=True)
    assert len(test) == 2 and np.shape(test[1]["input_features"])[-1] == 3500
    calls = []
    generate = teacher.generate

    def spy(features, **kwargs):
        calls.append((features.shape[-1], kwargs.get("attention_mask") is not None, kwargs.get("return_timestamps")))
        return generate(features, **{**kwargs, "max_new_tokens": 3})

    monkeypatch.setattr(teacher, "generate", spy)
    result = evaluate_model("teacher", teacher, processor, test, batch_size=2, repeats=1, warmup=0, progress=False)
    assert result.long_form == 1 and len(result.predictions) == 2
    assert (3500, True, True) in calls and (3000, False, None) in calls
    meta = report_meta([result], teacher, len(test))
    assert meta["long_form"]["rows"] == 1 and "sequential long-form" in meta["long_form"]["method"]
    assert meta["languages"] == ["de"]
    text = write_report([result], tmp_path / "report", meta)["md"].read_text()
    assert "1 recordings over the training window were decoded with Whisper's sequential long-form" in text


def test_each_language_is_normalised_and_scored_on_its_own():
    predictions = ["ten dollars", "Zehn Euro!", "dix euros"]
    references = ["$10", "zehn euro", "dix euro"]
    scores = asr_scores(predictions, references, languages=["en", "de", "fr"])
    assert scores["per_language"]["en"]["wer"] == 0.0  # English normaliser: "ten dollars" is "$10"
    assert scores["per_language"]["de"]["wer"] == 0.0  # basic normaliser: case and punctuation only
    assert scores["per_language"]["fr"]["wer"] == pytest.approx(0.5)
    assert scores["wer"] == pytest.approx(1 / 5)  # 1 + 2 + 2 normalised reference words, one substitution


def test_compute_metrics_reports_wer_per_language(processor):
    from transformers import EvalPrediction

    tok = processor.tokenizer
    rows = [("<|de|>", " der Hund"), ("<|es|>", " el perro")]
    labels = [[token(processor, lang), token(processor, "<|transcribe|>"), token(processor, "<|notimestamps|>"),
               *tok(text, add_special_tokens=False).input_ids, tok.eos_token_id] for lang, text in rows]
    width = max(map(len, labels))
    labels = np.array([row + [-100] * (width - len(row)) for row in labels])
    generated = [tok(text, add_special_tokens=False).input_ids for text in (" der Hund", " el gato")]
    width = max(map(len, generated)) + 1
    predictions = np.array([ids + [tok.eos_token_id] * (width - len(ids)) for ids in generated])
    metrics = wer_metrics(processor)(EvalPrediction(predictions=predictions, label_ids=labels))
    assert metrics["wer_de"] == 0.0 and metrics["wer_es"] == pytest.approx(0.5)


def test_trainer_evaluation_generates_each_row_in_its_language(processor, mixed_corpus, tmp_path, monkeypatch):
    teacher = stock_whisper()
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    ds, _ = prepare_dataset(load_speech_dataset(str(mixed_corpus)), processor, teacher, language_column="language")
    seen = []
    generate = student.generate

    def spy(*args, **kwargs):
        seen.append((kwargs.get("language"), kwargs.get("task")))
        return generate(*args, **{**kwargs, "max_new_tokens": 3})

    monkeypatch.setattr(student, "generate", spy)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, processing_class=processor, train_dataset=ds, eval_dataset=ds,
        data_collator=collator_for(processor, student), compute_metrics=wer_metrics(processor),
        args=make_args(tmp_path, max_steps=1, predict_with_generate=True, per_device_eval_batch_size=3,
                       generation_max_length=8))
    metrics = trainer.evaluate()
    assert seen == [(["de", "es", "it"], "transcribe"), (["pl", "en", "de"], "transcribe")]
    assert {"eval_wer_de", "eval_wer_es", "eval_wer_en", "eval_loss", "eval_loss_kd"} <= set(metrics)
    # eval_loss is the student's cross-entropy per label token, with or without generation
    plain = DistillationTrainer(
        model=student, teacher_model=teacher, processing_class=processor, train_dataset=ds, eval_dataset=ds,
        data_collator=collator_for(processor, student), args=make_args(tmp_path, per_device_eval_batch_size=3))
    assert plain.evaluate()["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)
