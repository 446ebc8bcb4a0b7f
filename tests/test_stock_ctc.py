"""CTC teachers as users have them: the config classes' defaults are the stock checkpoints' flags
(wav2vec2-base-960h: ctc_loss_reduction="sum", layerdrop=0.1, group-norm front-end, SpecAugment, no attention
mask from the feature extractor), with only the sizes shrunk."""

import numpy as np
import pytest
import torch
from transformers import Data2VecAudioConfig, HubertConfig, Wav2Vec2Config, WavLMConfig

from conftest import base_960h_processor, stock_ctc, write_speech_corpus
from helpers import make_args
from hf_asr_distill import DistillationTrainer, collator_for, make_student, wer_metrics
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.families import CTCFamily
from hf_asr_distill.losses import kl_loss, masked_mean

TEXTS = ["THE CAT SAT", "A DOG RAN HOME", "WE SEE IT", "ONE TWO", "GO NOW", "BIRDS FLY HIGH", "SO IT IS", "NO"]


@pytest.fixture
def corpus(tmp_path):
    return write_speech_corpus(tmp_path / "corpus" / "train", TEXTS, seconds=[1.0 + 0.15 * i for i in range(8)])


@pytest.mark.parametrize("config_class", [Wav2Vec2Config, HubertConfig, WavLMConfig, Data2VecAudioConfig])
def test_stock_teacher_distils_with_output_and_hidden_kd_and_evaluates(tmp_path, corpus, config_class, caplog):
    processor = base_960h_processor(tmp_path / "proc")
    teacher = stock_ctc(config_class)
    assert teacher.config.layerdrop == 0.1
    with caplog.at_level("INFO", logger="hf_asr_distill.student"):
        student, _ = make_student(teacher, num_hidden_layers=2)
    assert student.config.layerdrop == 0.0 and "layerdrop=0.1 copied from the teacher set to 0.0" in caplog.text
    ds, _ = prepare_dataset(load_speech_dataset(str(corpus)), processor, teacher)
    args = make_args(tmp_path, alpha_hidden=1.0, max_steps=3, eval_strategy="steps", eval_steps=3,
                     per_device_eval_batch_size=4)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                                  train_dataset=ds, eval_dataset=ds, data_collator=collator_for(processor, student),
                                  compute_metrics=wer_metrics(processor))
    trainer.train()
    logs = trainer.state.log_history
    train = [e for e in logs if "loss_ce" in e and "eval_loss" not in e]
    evaluation = [e for e in logs if "eval_wer" in e]
    assert len(train) == 3 and len(evaluation) == 1
    assert all(e["loss_kd"] > 0 and e["loss_hidden"] > 0 for e in train)
    # the hard-label term is per label token: the same order as per-token KD terms, not thousands of times larger
    assert all(0 < e["loss_ce"] < 50 for e in train)
    assert {"eval_loss_ce", "eval_loss_kd", "eval_loss_hidden", "eval_cer"} <= set(evaluation[0])


def _batch(processor, rows=2):
    rng = np.random.default_rng(0)
    features = [{"input_values": rng.standard_normal(n).astype(np.float32) * 0.1,
                 "labels": processor.tokenizer(text).input_ids}
                for n, text in zip((16000, 9000, 12000)[:rows], ("THE CAT", "GO", "SO IT IS"))]
    return collator_for(processor, stock_ctc(Wav2Vec2Config))(features)


def test_ctc_hard_loss_is_per_label_token_whatever_the_checkpoints_reduction(tmp_path):
    processor = base_960h_processor(tmp_path / "proc")
    batch = _batch(processor, rows=3)
    values = {}
    for reduction in ("sum", "mean"):
        teacher = stock_ctc(Wav2Vec2Config, ctc_loss_reduction=reduction, mask_time_prob=0.0)
        trainer = DistillationTrainer(model=teacher, teacher_model=None, args=make_args(tmp_path, alpha_kd=0.0),
                                      train_dataset=[1], data_collator=collator_for(processor, teacher))
        teacher.eval()
        trainer.compute_loss(teacher, batch)
        values[reduction] = trainer._metrics["eval"]["loss_ce"][0].item()
        # the model's own loss, from its own (sum or mean) reduction over full padded lengths, is not what counts
        with torch.no_grad():
            own = teacher(input_values=batch["input_values"], labels=batch["labels"]).loss.item()
        assert own != pytest.approx(values[reduction], rel=1e-3)
    assert values["sum"] == pytest.approx(values["mean"], rel=1e-6)
    teacher.eval()
    with torch.no_grad():  # the reference: CTC over the true lengths, summed, divided by the label tokens
        logits = teacher(input_values=batch["input_values"]).logits
    lengths = teacher._get_feat_extract_output_lengths(batch["input_lengths"])
    labels = batch["labels"]
    reference = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1), labels[labels >= 0], lengths, (labels >= 0).sum(-1),
        blank=0, reduction="sum", zero_infinity=True) / (labels >= 0).sum()
    assert values["mean"] == pytest.approx(reference.item(), rel=1e-5)


def test_no_attention_mask_reaches_the_model_but_the_losses_skip_padding(tmp_path):
    processor = base_960h_processor(tmp_path / "proc")
    batch = _batch(processor)
    assert "attention_mask" not in batch and batch["input_lengths"].tolist() == [16000, 9000]
    teacher = stock_ctc(Wav2Vec2Config)
    student, _ = make_student(teacher, num_hidden_layers=2)
    seen = []
    student.register_forward_pre_hook(lambda module, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, alpha_ce=0.0),
                                  train_dataset=[1], data_collator=collator_for(processor, student))
    student.eval()
    trainer.compute_loss(student, batch)
    assert seen == [{"input_values", "output_hidden_states"}]
    positions = CTCFamily().positions(student, batch)
    frames = [int(student._get_feat_extract_output_lengths(torch.tensor(n))) for n in (16000, 9000)]
    assert positions.sum(-1).tolist() == frames and frames[1] < positions.shape[1]
    with torch.no_grad():  # the logged KD is the mean over real frames only
        s, t = student(input_values=batch["input_values"]).logits, teacher(input_values=batch["input_values"]).logits
    expected = masked_mean(kl_loss(s, t, 2.0), positions)
    unmasked = kl_loss(s, t, 2.0).mean()
    assert trainer._metrics["eval"]["loss_kd"][0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() != pytest.approx(unmasked.item(), rel=1e-3)


def test_length_check_counts_a_blank_between_repeated_labels(tmp_path):
    processor = base_960h_processor(tmp_path / "proc")
    teacher = stock_ctc(Wav2Vec2Config)
    frames = int(teacher._get_feat_extract_output_lengths(torch.tensor(720)))
    assert frames == 2  # 720 samples: two output frames through the stock conv front-end
    folder = tmp_path / "short"
    write_speech_corpus(folder, ["EE", "ET"], seconds=[720 / 16000, 720 / 16000])
    ds = load_speech_dataset(str(folder))
    with pytest.raises(ValueError, match=r"row 0: 2 labels but only 2 CTC frames .*3 needed.*infinite"):
        prepare_dataset(ds, processor, teacher)
    kept, stats = prepare_dataset(ds, processor, teacher, on_error="skip")
    assert len(kept) == 1 and kept[0]["text"] == "ET" and stats.labels_too_long == 1


def test_group_norm_teacher_sees_zero_padded_input_without_a_mask(tmp_path):
    # what transformers documents for wav2vec2-base: zero-padded input, no attention mask; evaluation decodes padded
    # frames as blanks, so a padded row transcribes like the row alone as far as its frames allow
    processor = base_960h_processor(tmp_path / "proc")
    model = stock_ctc(Wav2Vec2Config)
    batch = _batch(processor)
    logits = model(input_values=batch["input_values"]).logits
    blanked = CTCFamily().evaluation_logits(model, batch, logits.detach())
    padded = ~CTCFamily().positions(model, batch)
    assert padded.any() and (blanked[padded].argmax(-1) == model.config.pad_token_id).all()


def test_packed_cache_of_a_stock_teacher_reads_back_its_live_outputs_at_real_frames(tmp_path, corpus):
    # rows of different lengths, no attention mask: each example's frames are a different slice of a packed shard
    from hf_asr_distill.cache import cache_teacher

    processor = base_960h_processor(tmp_path / "proc")
    teacher = stock_ctc(Wav2Vec2Config)
    ds, _ = prepare_dataset(load_speech_dataset(str(corpus)), processor, teacher)
    cache = cache_teacher(teacher, processor, ds, tmp_path / "cache", k=4, hidden_layers={"encoder": [1]},
                          batch_size=4, progress=False, shard_bytes=1)  # a shard per batch of 4 rows
    assert len(list((tmp_path / "cache").glob("shard_*.safetensors"))) == 2
    collate = collator_for(processor, teacher)
    live = {}
    with torch.no_grad():  # the teacher on the batches it was cached in (group norm sees each batch's padding)
        for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
            batch = collate([ds[i] for i in rows])
            out = teacher(input_values=batch["input_values"], output_hidden_states=True)
            top = torch.log_softmax(out.logits / 2.0, -1).topk(4, -1)
            for row, (index, frames) in enumerate(zip(rows, CTCFamily().positions(teacher, batch).sum(-1))):
                live[index] = (top.values[row, :frames], top.indices[row, :frames], out.hidden_states[1][row, :frames])
    order = [5, 2, 7, 0]  # across both shards
    batch = collate([ds[i] for i in order])
    positions = CTCFamily().positions(teacher, batch)
    assert len(set(positions.sum(-1).tolist())) == 4  # four different frame counts
    cached = cache.batch(batch["example_id"].tolist(), positions)
    for row, index in enumerate(order):
        values, indices, hidden = live[index]
        frames = len(values)
        assert frames == int(positions[row].sum())
        assert torch.equal(cached.indices[row, :frames], indices)
        assert torch.equal(cached.logprobs[row, :frames], values.half())
        assert torch.equal(cached.hidden["encoder"][1][row, :frames], hidden.half())
        assert not cached.logprobs[row, frames:].any()  # padded frames hold nothing
