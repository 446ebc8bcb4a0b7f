import json

import pytest
from safetensors import safe_open
import torch
import torch.nn.functional as F

import hf_asr_distill.pseudo_label as pl
from conftest import ctc_processor, tiny_ctc, tiny_real_whisper, whisper_processor, write_corpus
from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.cache import TeacherCache, bucket_logprobs, cache_size_bytes, cache_teacher, read_index
from hf_asr_distill.data import load_speech_dataset, normalize_for_vocab, prepare_dataset
from hf_asr_distill.pseudo_label import PROGRESS_FILE, pseudo_label
from hf_asr_distill.trainer import check_pair


@pytest.fixture
def whisper_setup(tmp_path):
    processor = whisper_processor(tmp_path / "tok")
    teacher = tiny_real_whisper(processor)
    ds, _ = prepare_dataset(load_speech_dataset(str(write_corpus(tmp_path / "c", n=6))), processor, teacher)
    return processor, teacher, ds


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=3, max_steps=2, report_to="none",
                save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    return DistillationConfig(**{**base, **kw})


# ---- pseudo-labels ---------------------------------------------------------------------------------------------


def test_wer_filter_keeps_and_drops_the_right_rows(tmp_path, monkeypatch):
    ds = load_speech_dataset(str(write_corpus(tmp_path / "c", n=4)))
    refs = ds["text"]
    fake = [refs[0], refs[1].upper() + ".", "completely different words here", refs[3]]
    monkeypatch.setattr(pl, "transcribe_dataset", lambda *a, **k: fake)
    data = ds.map(lambda r, i: {"text": "" if i == 3 else r["text"]}, with_indices=True)
    out, stats = pseudo_label(None, ctc_processor(tmp_path), data, max_wer=0.1)
    assert out["pseudo_text"] == fake[:2]  # case and punctuation are normalised away; row 2 is too far
    assert (stats.kept, stats.dropped_wer, stats.dropped_empty_reference) == (2, 1, 1)
    unlabelled, stats = pseudo_label(None, ctc_processor(tmp_path), ds.remove_columns("text"), max_wer=0.1)
    assert len(unlabelled) == 4 and stats.kept == 4


def test_pseudo_labelling_resumes_without_redoing_or_losing_rows(tmp_path, monkeypatch):
    processor, teacher = ctc_processor(tmp_path), tiny_ctc()
    ds = load_speech_dataset(str(write_corpus(tmp_path / "c", n=5)))
    full, _ = pseudo_label(teacher, processor, ds, batch_size=2, progress=False)
    calls = {"n": 0}
    real = pl.transcribe_batch

    def dies_on_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a kill in the middle of the run
        return real(*a, **k)

    monkeypatch.setattr(pl, "transcribe_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(teacher, processor, ds, batch_size=2, work_dir=tmp_path / "work", progress=False)
    assert len((tmp_path / "work" / PROGRESS_FILE).read_text().splitlines()) == 2
    monkeypatch.setattr(pl, "transcribe_batch", real)
    seen = []
    monkeypatch.setattr(pl, "transcribe_batch", lambda m, p, b, g=None: seen.append(len(b["input_values"])) or
                        real(m, p, b, g))
    resumed, _ = pseudo_label(teacher, processor, ds, batch_size=2, work_dir=tmp_path / "work", progress=False)
    assert sum(seen) == 3  # only the rows not done before
    assert resumed["pseudo_text"] == full["pseudo_text"]
    indices = [json.loads(l)["index"] for l in (tmp_path / "work" / PROGRESS_FILE).read_text().splitlines()]
    assert sorted(indices) == list(range(5))


def test_whisper_pseudo_labels_train_a_ctc_student(tmp_path):
    processor = whisper_processor(tmp_path / "tok")
    teacher = tiny_real_whisper(processor)
    ds = load_speech_dataset(str(write_corpus(tmp_path / "c", n=6)))
    # max_wer=None: every row is kept (an untrained teacher would fail the default 10 % filter on all of them)
    labelled, _ = pseudo_label(teacher, processor, ds, progress=False, generate_kwargs={"max_new_tokens": 6},
                               max_wer=None)
    ctc = ctc_processor(tmp_path)
    labelled = labelled.map(lambda r: {"pseudo_text": normalize_for_vocab(r["pseudo_text"], ctc.tokenizer) or "a"})
    student = tiny_ctc(num_hidden_layers=2)
    train, _ = prepare_dataset(labelled, ctc, student, text_column="pseudo_text")
    with pytest.raises(ValueError, match="unavailable across families and vocabularies"):
        check_pair(teacher, student, args(tmp_path))
    before = student.lm_head.weight.clone()
    trainer = DistillationTrainer(model=student, teacher_model=None, args=args(tmp_path, alpha_kd=0.0, alpha_ce=1.0),
                                  train_dataset=train, data_collator=collator_for(ctc, student))
    trainer.train()
    assert not torch.equal(before, student.lm_head.weight)


def test_normalize_for_vocab():
    class Tok:
        def get_vocab(self):
            return {c: i for i, c in enumerate(["<pad>", "|", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"])}

    assert normalize_for_vocab(" Hello, world! It's 5 o'clock.", Tok()) == "HELLO WORLD IT'S O'CLOCK"


# ---- teacher cache ---------------------------------------------------------------------------------------------


def test_cache_round_trip_equals_live_teacher_topk(tmp_path, whisper_setup):
    processor, teacher, ds = whisper_setup
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=8, temperature=2.0,
                          hidden_layers={"decoder": [4]}, batch_size=4, progress=False)
    batch = collator_for(processor, teacher)([ds[i] for i in range(6)])
    mask = batch["labels"].ne(-100)
    with torch.no_grad():
        dec = torch.cat([torch.full((6, 1), teacher.config.decoder_start_token_id), batch["labels"][:, :-1]], 1)
        out = teacher(input_features=batch["input_features"], decoder_input_ids=dec.clamp(min=0),
                      output_hidden_states=True)
    live = F.log_softmax(out.logits / 2.0, -1).topk(8, -1)
    cached = cache.batch(batch["example_id"].tolist(), mask, torch.device("cpu"))
    assert torch.equal(cached.logprobs[mask], live.values[mask].half())
    assert torch.equal(cached.indices[mask], live.indices[mask])
    assert torch.equal(cached.hidden["decoder"][4][mask], out.decoder_hidden_states[4][mask].half())
    # packed shards: one tensor per output, whatever the number of examples in the shard
    shard = next((tmp_path / "cache").glob("shard_*.safetensors"))
    with safe_open(str(shard), framework="pt") as f:
        assert sorted(f.keys()) == ["hidden.decoder.4", "indices", "logprobs"]
        assert f.get_slice("logprobs").get_shape()[0] == int(mask.sum())
    # the same outputs read back from a shard per batch (4 + 2 examples), in another order
    small = cache_teacher(teacher, processor, ds, tmp_path / "small", k=8, temperature=2.0,
                          hidden_layers={"decoder": [4]}, batch_size=4, progress=False, shard_bytes=1)
    assert len(list((tmp_path / "small").glob("shard_*.safetensors"))) == 2
    order = [5, 0, 3, 1, 4, 2]
    again = small.batch([batch["example_id"].tolist()[i] for i in order], mask[order], torch.device("cpu"))
    assert torch.equal(again.logprobs, cached.logprobs[order])
    assert torch.equal(again.hidden["decoder"][4], cached.hidden["decoder"][4][order])


def test_topk_cache_with_full_vocab_matches_live_kd(tmp_path, whisper_setup):
    processor, teacher, ds = whisper_setup
    with torch.no_grad():  # a confident teacher, as trained ones are
        teacher.model.decoder.embed_tokens.weight.mul_(30)
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=teacher.config.vocab_size, progress=False)
    student = tiny_real_whisper(processor, decoder_layers=2, seed=3)  # far from the teacher: a sizeable KL
    batch = collator_for(processor, student)([ds[i] for i in range(6)])
    values = {}
    for name, cache_arg in (("live", None), ("cached", cache)):
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path / name),
                                      teacher_cache=cache_arg, processing_class=processor, train_dataset=ds,
                                      data_collator=collator_for(processor, student))
        trainer.compute_loss(student.train(), batch)  # no dropout in this model: train mode is deterministic
        values[name] = trainer._metrics["train"]["loss_kd"][0].item()
        if cache_arg is not None:  # evaluation batches are not in the cache: hard-label loss only
            trainer.compute_loss(student.eval(), batch)
            assert set(trainer._metrics["eval"]) == {"loss_ce"}
    assert values["live"] > 0.1
    assert values["cached"] == pytest.approx(values["live"], rel=2e-3)


def test_tail_bucket_holds_the_missing_mass():
    logp = torch.log(torch.tensor([[0.5, 0.3]]))
    assert torch.allclose(bucket_logprobs(logp).exp(), torch.tensor([[0.5, 0.3, 0.2]]), atol=1e-6)


def test_stale_or_mismatched_cache_is_refused(tmp_path, whisper_setup):
    processor, teacher, ds = whisper_setup
    cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, progress=False)
    student, _ = make_student(teacher, decoder_layers=2)
    common = dict(processing_class=processor, train_dataset=ds, data_collator=collator_for(processor, student))
    other = tiny_real_whisper(processor, seed=1)
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        DistillationTrainer(model=student, teacher_model=other, args=args(tmp_path), teacher_cache=str(
            tmp_path / "cache"), **common)
    other_audio, _ = prepare_dataset(load_speech_dataset(str(write_corpus(tmp_path / "o", n=6, seed=5))), processor,
                                     teacher)
    with pytest.raises(ValueError, match="has no entry for the audio of examples"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path),
                            teacher_cache=str(tmp_path / "cache"), **{**common, "train_dataset": other_audio})
    # a subset of the cached rows is served; the same audio with other labels is refused when its batch is read
    DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path),
                        teacher_cache=str(tmp_path / "cache"), **{**common, "train_dataset": ds.select(range(5))})
    relabelled = ds.with_format(None).map(lambda r: {"text": r["text"][::-1]}).remove_columns(["duration"])
    relabelled, _ = prepare_dataset(relabelled, processor, teacher)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path),
                                  teacher_cache=str(tmp_path / "cache"), **{**common, "train_dataset": relabelled})
    with pytest.raises(ValueError, match=r"have other labels than the teacher cache .* rebuild it for these labels"):
        next(iter(trainer.get_train_dataloader()))
    with pytest.raises(ValueError, match="temperature 2.0, this run uses 3.0"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path, temperature=3.0),
                            teacher_cache=str(tmp_path / "cache"), **common)
    with pytest.raises(ValueError, match="no teacher encoder hidden states"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path, alpha_hidden=1.0),
                            teacher_cache=str(tmp_path / "cache"), **common)
    with pytest.raises(ValueError, match="holds a cache for another teacher"):
        cache_teacher(other, processor, ds, tmp_path / "cache", k=4, progress=False)


def test_cache_from_the_fp32_teacher_serves_a_bf16_teacher_run(tmp_path, whisper_setup):
    # teacher_dtype says how a live teacher runs; with a cache the teacher never runs, so it is neither cast (which
    # would change its fingerprint and refuse the cache) nor moved.
    processor, teacher, ds = whisper_setup
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, progress=False)
    student, _ = make_student(teacher, decoder_layers=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path, teacher_dtype="bf16"),
                                  teacher_cache=cache, processing_class=processor, train_dataset=ds,
                                  data_collator=collator_for(processor, student))
    assert trainer.teacher.dtype == torch.float32
    trainer.train()
    assert [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e]


def test_interrupted_cache_resumes_after_its_last_shard(tmp_path, whisper_setup, monkeypatch):
    processor, teacher, ds = whisper_setup
    # shard_bytes=1: one shard per batch of 2, so 3 shards; the kill lost the last one (and its index line)
    cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, batch_size=2, progress=False, shard_bytes=1)
    index = tmp_path / "cache" / "index.p000.jsonl"
    lines = index.read_text().splitlines()
    assert len(lines) == 3 and len(list((tmp_path / "cache").glob("shard_*.safetensors"))) == 3
    (tmp_path / "cache" / json.loads(lines[-1])["shard"]).unlink()
    index.write_text("\n".join(lines[:-1]) + "\n")
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="incomplete"):
        TeacherCache(tmp_path / "cache")
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, batch_size=2, progress=False,
                          shard_bytes=1)
    assert len(calls) == 1 and cache.manifest["complete"]
    assert cache_size_bytes(tmp_path / "cache") > 0


def test_shards_are_size_bounded_and_the_index_is_read_without_opening_them(tmp_path, whisper_setup, monkeypatch):
    processor, teacher, ds = whisper_setup
    cache_teacher(teacher, processor, ds, tmp_path / "cache", k=8, batch_size=2, progress=False, shard_bytes=3000,
                  hidden_layers={"decoder": [4]})
    shards = sorted((tmp_path / "cache").glob("shard_*.safetensors"))
    assert 1 < len(shards) < 6  # bounded by size, not one per batch
    import hf_asr_distill.cache as cache_module

    opened = []
    real_open = cache_module.safe_open
    monkeypatch.setattr(cache_module, "safe_open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    cache = TeacherCache(tmp_path / "cache")
    assert opened == []  # start-up reads the index only
    batch = collator_for(processor, teacher)([ds[i] for i in range(2)])
    cache.batch(batch["example_id"].tolist(), batch["labels"].ne(-100))
    assert 1 <= len(opened) <= 2


def test_examples_per_shard_and_open_shards_are_capped_so_memory_does_not_grow_with_rows(tmp_path, whisper_setup,
                                                                                      monkeypatch):
    import hf_asr_distill.cache as cache_module

    processor, teacher, ds = whisper_setup
    monkeypatch.setattr(cache_module, "SHARD_EXAMPLES", 2)
    monkeypatch.setattr(cache_module, "OPEN_SHARDS", 2)
    cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, batch_size=1, progress=False)
    index = read_index(tmp_path / "cache")
    assert [len(line["examples"]) for line in index] == [2] * (len(ds) // 2) + [1] * (len(ds) % 2)
    cache = TeacherCache(tmp_path / "cache")
    everything = cache._read_examples(list(range(len(ds))))  # every shard opened in turn
    assert len(everything) == len(ds) and len(cache._handles) == 2


def test_a_damaged_shard_is_named_with_the_fix(tmp_path, whisper_setup):
    processor, teacher, ds = whisper_setup
    cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, batch_size=2, progress=False, shard_bytes=1)
    shard = sorted((tmp_path / "cache").glob("shard_*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=rf"Cache shard .*{shard.name} is missing or damaged .*run cache_teacher"):
        TeacherCache(tmp_path / "cache")


def test_encoder_output_cache_serves_live_kd_at_any_temperature_and_on_pseudo_labels(tmp_path, whisper_setup):
    processor, teacher, ds = whisper_setup
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=0, encoder_outputs=True, progress=False)
    assert not cache.has_probabilities
    calls = {"teacher_encoder": 0, "teacher_decoder": 0, "student_encoder": 0}
    for name, module in (("teacher_encoder", teacher.model.encoder), ("teacher_decoder", teacher.model.decoder),
                         ("student_encoder", student.model.encoder)):
        module.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path, temperature=3.0,
                                                                                  max_steps=2),
                                  teacher_cache=cache, processing_class=processor, train_dataset=ds,
                                  data_collator=collator_for(processor, student))
    trainer.train()
    assert calls == {"teacher_encoder": 0, "teacher_decoder": 2, "student_encoder": 0}
    assert all(e["loss_kd"] > 0 for e in trainer.state.log_history if "loss_kd" in e)
    # the same audio with other targets (as pseudo-labels are) is served; other audio is refused
    relabelled = ds.with_format(None).map(lambda r: {"text": r["text"][::-1]})
    relabelled, _ = prepare_dataset(relabelled.remove_columns(["duration"]), processor, teacher)
    DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path), teacher_cache=cache,
                        processing_class=processor, train_dataset=relabelled,
                        data_collator=collator_for(processor, student))
    other, _ = prepare_dataset(load_speech_dataset(str(write_corpus(tmp_path / "other", n=6, seed=3))), processor,
                               teacher)
    with pytest.raises(ValueError, match="has no entry for the audio of examples"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path), teacher_cache=cache,
                            processing_class=processor, train_dataset=other,
                            data_collator=collator_for(processor, student))


def test_training_batches_carry_the_cached_outputs_read_by_the_dataloader(tmp_path, whisper_setup, monkeypatch):
    processor, teacher, ds = whisper_setup
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, progress=False)
    student, _ = make_student(teacher, decoder_layers=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path), teacher_cache=cache,
                                  processing_class=processor, train_dataset=ds,
                                  data_collator=collator_for(processor, student))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["cached_logprobs"].shape[:2] == batch["labels"].shape and batch["cached_indices"].dtype == torch.long
    read = []
    monkeypatch.setattr(TeacherCache, "batch", lambda *a, **k: read.append(1))
    trainer.compute_loss(student.train(), batch)  # the step itself reads nothing from disk
    assert read == [] and trainer._metrics["train"]["loss_kd"]


def test_training_from_the_cache_never_runs_the_teacher(tmp_path, whisper_setup):
    processor, teacher, ds = whisper_setup
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=8, hidden_layers={"decoder": [1, 4]},
                          encoder_outputs=True, progress=False)
    calls = {"teacher": 0, "student_encoder": 0}
    teacher.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    student.model.encoder.register_forward_hook(
        lambda *a: calls.__setitem__("student_encoder", calls["student_encoder"] + 1))
    before = student.model.decoder.layers[0].fc1.weight.clone()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path, alpha_hidden=1.0),
                                  teacher_cache=cache, processing_class=processor, train_dataset=ds,
                                  data_collator=collator_for(processor, student))
    trainer.train()
    assert calls == {"teacher": 0, "student_encoder": 0}  # the encoder ran once per example, at caching time
    assert not torch.equal(before, student.model.decoder.layers[0].fc1.weight)
    assert [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e]


def test_cache_settings_are_checked(tmp_path, whisper_setup):
    processor, teacher, ds = whisper_setup
    with pytest.raises(ValueError, match="temperature must be > 0"):
        cache_teacher(teacher, processor, ds, tmp_path / "c", temperature=0.0, progress=False)
    with pytest.raises(ValueError, match="k must be between 1 and the vocabulary size"):
        cache_teacher(teacher, processor, ds, tmp_path / "c", k=0, progress=False)


def test_training_from_an_encoder_cache_never_reads_the_audio(tmp_path, whisper_setup, monkeypatch):
    import hf_asr_distill.data as data_module

    processor, teacher, ds = whisper_setup
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=0, encoder_outputs=True, progress=False)
    raw = load_speech_dataset(str(write_corpus(tmp_path / "c", n=6)))
    monkeypatch.setattr(data_module, "decode_audio", lambda *a, **k: pytest.fail("the audio was decoded"))
    labels_only, _ = prepare_dataset(raw, processor, teacher, features=False)
    assert "input_features" not in labels_only[0] and labels_only[0]["labels"]
    student, _ = make_student(teacher, decoder_layers=2, freeze_encoder=True)
    before = student.model.decoder.layers[0].fc1.weight.clone()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path), teacher_cache=cache,
                                  processing_class=processor, train_dataset=labels_only,
                                  data_collator=collator_for(processor, student))
    trainer.train()
    assert not torch.equal(before, student.model.decoder.layers[0].fc1.weight)
    plain = DistillationTrainer(model=student, teacher_model=teacher, args=args(tmp_path), processing_class=processor,
                                train_dataset=labels_only, data_collator=collator_for(processor, student))
    with pytest.raises(ValueError, match="no input_features: datasets prepared with features=False"):
        plain.train()
