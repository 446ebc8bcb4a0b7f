import json

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Dataset

from conftest import ctc_processor, tiny_ctc, whisper_features, write_corpus
from hf_asr_distill.data import (
    AudioError, CTCCollator, WhisperCollator, decode_audio, load_speech_dataset, prepare_dataset,
)


def test_audiofolder_with_split_folders(tmp_path):
    write_corpus(tmp_path / "corpus" / "train", n=4)
    ds = load_speech_dataset(str(tmp_path / "corpus"), split="train")
    assert len(ds) == 4 and set(ds.column_names) == {"audio", "text"}
    assert ds[0]["audio"].startswith(str(tmp_path / "corpus" / "train"))


def test_csv_and_jsonl_manifests_resolve_relative_paths(tmp_path):
    write_corpus(tmp_path, n=3)
    ds = load_speech_dataset(str(tmp_path / "metadata.csv"))
    assert decode_audio(ds[2]["audio"], 16000).shape == (int(16000 * 0.14),)
    rows = [{"path": f"clip{i}.wav", "sentence": "abc"} for i in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_speech_dataset(str(tmp_path / "m.jsonl"), audio_column="path", text_column="sentence")
    assert ds[0]["path"] == str(tmp_path / "clip0.wav")


def test_saved_dataset_and_missing_columns(tmp_path):
    write_corpus(tmp_path / "c", n=2)
    Dataset.from_dict({"audio": [str(tmp_path / "c" / "clip0.wav")], "sentence": ["abc"]}).save_to_disk(
        str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"no text column 'text'; its columns are \['audio', 'sentence'\]"):
        load_speech_dataset(str(tmp_path / "saved"))
    assert len(load_speech_dataset(str(tmp_path / "saved"), text_column="sentence")) == 1
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ValueError, match="no metadata.csv or metadata.jsonl"):
        load_speech_dataset(str(tmp_path / "empty_folder"))


def test_decoding_rates_channels_and_bit_depths(tmp_path):
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "8k.wav", tone, 8000)
    out = decode_audio(str(tmp_path / "8k.wav"), 16000)
    assert out.dtype == np.float32 and abs(len(out) - 16000) <= 1
    assert abs(np.abs(out).max() - 0.5) < 0.02  # resampled, not distorted
    sf.write(tmp_path / "stereo.wav", np.stack([tone, np.zeros_like(tone)], 1), 8000)
    assert np.allclose(decode_audio(str(tmp_path / "stereo.wav"), 8000), tone / 2, atol=1e-4)
    for subtype, tol in (("PCM_U8", 0.01), ("PCM_24", 1e-6)):
        sf.write(tmp_path / f"{subtype}.wav", tone, 8000, subtype=subtype)
        assert np.allclose(decode_audio(str(tmp_path / f"{subtype}.wav"), 8000), tone, atol=tol)
    data = (tmp_path / "8k.wav").read_bytes()
    assert len(decode_audio({"bytes": data, "path": None}, 8000)) == 8000
    assert len(decode_audio({"array": tone, "sampling_rate": 8000}, 16000)) == 16000


def test_bad_audio_is_named(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav is empty"):
        decode_audio(str(tmp_path / "empty.wav"), 16000)
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav contains NaN"):
        decode_audio(str(tmp_path / "nan.wav"), 16000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioError, match="cannot decode audio .*junk.wav"):
        decode_audio(str(tmp_path / "junk.wav"), 16000)
    full = tmp_path / "full.wav"
    sf.write(full, np.full(16000, 0.25, dtype=np.float32), 16000)
    (tmp_path / "cut.wav").write_bytes(full.read_bytes()[:20000])  # truncated mid-file: what is there decodes
    cut = decode_audio(str(tmp_path / "cut.wav"), 16000)
    assert 0 < len(cut) < 16000 and np.allclose(cut, 0.25, atol=1e-4)


def _bad_corpus(tmp_path):
    folder = write_corpus(tmp_path / "c", n=4)
    sf.write(folder / "clip1.wav", np.zeros(0, dtype=np.float32), 16000)
    text = (folder / "metadata.csv").read_text().splitlines()
    text[3] = "clip2.wav,"  # empty transcript
    (folder / "metadata.csv").write_text("\n".join(text) + "\n")
    return load_speech_dataset(str(folder))


def test_prepare_raises_naming_the_row_or_skips_and_counts(tmp_path):
    processor = ctc_processor(tmp_path)
    ds = _bad_corpus(tmp_path)
    with pytest.raises(ValueError, match=r"row 1: audio .*clip1.wav is empty .*on_error='skip'"):
        prepare_dataset(ds, processor, tiny_ctc())
    prepared, stats = prepare_dataset(ds, processor, tiny_ctc(), on_error="skip")
    assert (stats.kept, stats.bad_audio, stats.empty_text) == (2, 1, 1) and len(prepared) == 2
    row = prepared[0]
    assert set(row) >= {"input_values", "labels", "text", "audio_seconds"}
    assert row["labels"] == processor.tokenizer(row["text"]).input_ids
    with pytest.raises(ValueError, match="No rows left after filtering"):
        prepare_dataset(ds, processor, tiny_ctc(), on_error="skip", max_seconds=0.01)


def test_duration_filter_and_lazy_features(tmp_path):
    processor = ctc_processor(tmp_path)
    ds = load_speech_dataset(str(write_corpus(tmp_path / "c", n=6)))
    prepared, stats = prepare_dataset(ds, processor, tiny_ctc(), max_seconds=0.15)
    assert stats.too_long == 3 and len(prepared) == 3
    # features are computed on access; the duration measured by the check is kept (for group_by_length)
    assert set(prepared.column_names) == {"audio", "text", "example_id", "duration"}
    assert prepared.with_format(None)["duration"] == pytest.approx([0.1, 0.12, 0.14])
    assert len(prepared[2]["input_values"]) == int(16000 * 0.14)


def test_whisper_collator_pads_labels_to_the_longest_and_drops_start_token():
    collate = WhisperCollator(whisper_features(), decoder_start_token_id=2)
    rows = [{"input_features": np.zeros((8, 32), np.float32), "labels": [2, 5, 6, 3]},
            {"input_features": np.ones((8, 32), np.float32), "labels": [2, 7, 3]}]
    batch = collate(rows)
    assert batch["input_features"].shape == (2, 8, 32)
    assert batch["labels"].tolist() == [[5, 6, 3], [7, 3, -100]]


def test_ctc_collator_pads_audio_with_a_mask():
    from conftest import ctc_features

    batch = CTCCollator(ctc_features())([{"input_values": np.ones(5), "labels": [1, 2]},
                                         {"input_values": np.ones(3), "labels": [3]}])
    assert batch["input_values"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2], [3, -100]]


def test_a_stream_is_checked_as_it_streams_and_trains(tmp_path):
    from helpers import make_args
    from hf_asr_distill import DistillationTrainer, collator_for, make_student

    processor = ctc_processor(tmp_path)
    folder = write_corpus(tmp_path / "c", n=8)
    sf.write(folder / "clip1.wav", np.zeros(0, dtype=np.float32), 16000)  # a bad row in the middle
    stream = load_speech_dataset(str(folder), streaming=True)
    with pytest.raises(ValueError, match=r"row 1: audio .*clip1.wav is empty .*on_error='skip'"):
        list(prepare_dataset(stream, processor, tiny_ctc())[0])
    prepared, stats = prepare_dataset(stream, processor, tiny_ctc(), on_error="skip")
    rows = list(prepared)
    assert len(rows) == 7 and stats.bad_audio == 1 and stats.kept == 7  # counted as the rows went by
    assert [r["example_id"] for r in rows] == [0, 2, 3, 4, 5, 6, 7]
    teacher = tiny_ctc()
    student, _ = make_student(teacher, num_hidden_layers=2)
    before = student.lm_head.weight.clone()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, max_steps=3),
                                  train_dataset=prepare_dataset(stream, processor, teacher, on_error="skip")[0],
                                  data_collator=collator_for(processor, student))
    trainer.train()
    assert trainer.state.global_step == 3 and not torch.equal(before, student.lm_head.weight)


def test_checks_run_once_through_datasets_and_never_copy_the_audio(tmp_path, monkeypatch):
    import hf_asr_distill.data as data_module

    processor = ctc_processor(tmp_path)
    ds = load_speech_dataset(str(write_corpus(tmp_path / "c", n=6)))
    first, _ = prepare_dataset(ds, processor, tiny_ctc(), num_proc=2)
    calls = []
    real = data_module.audio_seconds
    monkeypatch.setattr(data_module, "audio_seconds", lambda value: calls.append(value) or real(value))
    again, stats = prepare_dataset(ds, processor, tiny_ctc())  # same rows, same settings: datasets' cache
    assert calls == [] and stats.kept == 6
    assert again.with_format(None)["duration"] == first.with_format(None)["duration"]
    # the checked dataset points at the same audio table: only the small check columns were written
    assert again.with_format(None)._data.column("audio") is not None
    assert {f["filename"] for f in again.cache_files} >= {f["filename"] for f in ds.cache_files}


def test_group_by_length_reads_the_kept_durations_without_decoding(tmp_path, monkeypatch):
    import hf_asr_distill.data as data_module
    from helpers import make_args
    from hf_asr_distill import DistillationTrainer, collator_for

    processor = ctc_processor(tmp_path)
    ds, _ = prepare_dataset(load_speech_dataset(str(write_corpus(tmp_path / "c", n=6))), processor, tiny_ctc())
    trainer = DistillationTrainer(model=tiny_ctc(num_hidden_layers=2), teacher_model=tiny_ctc(),
                                  args=make_args(tmp_path, train_sampling_strategy="group_by_length"),
                                  train_dataset=ds, data_collator=collator_for(processor, tiny_ctc()))
    monkeypatch.setattr(data_module, "decode_audio", lambda *a, **k: pytest.fail("audio decoded for the lengths"))
    sampler = trainer._get_train_sampler()
    assert sorted(sampler.lengths) == pytest.approx(sorted(0.1 + 0.02 * i for i in range(6)))
