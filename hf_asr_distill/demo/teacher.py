"""The demo's small Wav2Vec2 CTC teacher: its processor, its config, how it was trained, and where it ships."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from transformers import (
    Trainer, TrainingArguments, Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from .corpus import available_voices, make_corpus

DEMO_CHARS = "abcdefghijklmnopqrstuvwxyz'"
DEMO_VOICES = ["flite:slt", "flite:kal", "flite:awb", "flite:rms"]


def shipped_teacher_path() -> Path:
    """Folder of the small CTC teacher that ships with the package."""
    return Path(str(resources.files("hf_asr_distill.demo") / "assets" / "demo_teacher"))


def demo_processor() -> Wav2Vec2Processor:
    """Character-level CTC processor: <pad> (the CTC blank), | (word boundary), a-z and the apostrophe."""
    import tempfile

    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(DEMO_CHARS)}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(path), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|",
                                         bos_token=None, eos_token=None)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def demo_teacher_config(vocab_size: int) -> Wav2Vec2Config:
    """A small Wav2Vec2 (20 ms frames, 4 x 192-wide layers) that learns the synthetic corpus on a CPU.

    The conv front-end is 5 narrow layers (the standard one has 7 x 512 channels) to keep CPU training short.
    """
    return Wav2Vec2Config(
        vocab_size=vocab_size, hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
        conv_dim=(32,) * 5, conv_stride=(5, 4, 4, 2, 2), conv_kernel=(10, 8, 8, 4, 4), num_feat_extract_layers=5,
        feat_extract_norm="group", do_stable_layer_norm=True, num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=8, layerdrop=0.0, mask_time_prob=0.05, hidden_dropout=0.05,
        attention_dropout=0.05, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
        ctc_loss_reduction="mean", ctc_zero_infinity=True, pad_token_id=0,
    )


def demo_corpus(folder: str | Path, per_voice_train: int = 150, per_voice_test: int = 10) -> Path:
    """Synthesise (once) the demo corpus: every flite voice, disjoint train and test sentences."""
    missing = [v for v in DEMO_VOICES if v not in available_voices()]
    if missing:
        raise RuntimeError("The demo corpus needs flite (Debian/Ubuntu: apt-get install flite); "
                           "or pass --teacher and --dataset to use your own.")
    return make_corpus(folder, {"train": (DEMO_VOICES, per_voice_train), "test": (DEMO_VOICES, per_voice_test)})


def train_demo_teacher(corpus: str | Path, output_dir: str | Path, max_steps: int = 1500, seed: int = 0,
                       split: str = "train") -> Path:
    """Train the demo's CTC teacher from scratch on a split of the synthetic corpus (how the shipped one was made)."""
    from ..data import collator_for, load_speech_dataset, prepare_dataset

    processor = demo_processor()
    model = Wav2Vec2ForCTC(demo_teacher_config(len(processor.tokenizer)))
    train, _ = prepare_dataset(load_speech_dataset(str(corpus), split), processor, model)
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=16,
                             learning_rate=1e-3, warmup_steps=200, weight_decay=0.01, logging_steps=50,
                             save_strategy="no", report_to="none", seed=seed, remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=train, data_collator=collator_for(processor, model)).train()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return Path(output_dir)
