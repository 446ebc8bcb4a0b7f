"""Tiny Whisper and Wav2Vec2 CTC models built in code, so every test runs offline in seconds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np
import pytest
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

WHISPER_VOCAB = 64
CTC_VOCAB = 12


def tiny_whisper(encoder_layers: int = 4, decoder_layers: int = 4, d_model: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=WHISPER_VOCAB, num_mel_bins=8, d_model=d_model, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=16, max_target_positions=32, pad_token_id=1, bos_token_id=2,
        eos_token_id=3, decoder_start_token_id=2, suppress_tokens=[], begin_suppress_tokens=[],
    )
    return WhisperForConditionalGeneration(config).eval()


def tiny_ctc(num_hidden_layers: int = 4, hidden_size: int = 32, conv_stride=(4, 4), seed: int = 0):
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=CTC_VOCAB, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=2,
        intermediate_size=64, conv_dim=(16, 16), conv_stride=conv_stride, conv_kernel=(8, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        do_stable_layer_norm=True, ctc_loss_reduction="mean", pad_token_id=0, mask_time_prob=0.0,
        layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    )
    return Wav2Vec2ForCTC(config).eval()


def whisper_features():
    return WhisperFeatureExtractor(feature_size=8)


def ctc_features():
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, return_attention_mask=True)


def whisper_rows(n: int = 8, seed: int = 0):
    """Examples as the data pipeline produces them: log-mel features and label ids of varying length."""
    rng = np.random.default_rng(seed)
    return [
        {"input_features": rng.standard_normal((8, 32)).astype(np.float32),
         "labels": [2, *rng.integers(4, WHISPER_VOCAB, size=int(rng.integers(3, 9))).tolist(), 3]}
        for _ in range(n)
    ]


def ctc_rows(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        {"input_values": rng.standard_normal(int(rng.integers(1200, 2000))).astype(np.float32),
         "labels": rng.integers(1, CTC_VOCAB, size=int(rng.integers(2, 6))).tolist()}
        for _ in range(n)
    ]


@pytest.fixture(autouse=True)
def _quiet_and_seeded(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


CTC_CHARS = "abcdefghij"  # with <pad>=0 and |=1 this gives the tiny CTC vocab of 12


def ctc_processor(folder):
    """A real Wav2Vec2Processor over a 12-symbol character vocabulary."""
    import json

    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    vocab = {"<pad>": 0, "|": 1, **{c: i + 2 for i, c in enumerate(CTC_CHARS)}}
    path = folder / "vocab.json"
    path.write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(path), unk_token="<pad>", pad_token="<pad>", word_delimiter_token="|")
    return Wav2Vec2Processor(feature_extractor=ctc_features(), tokenizer=tokenizer)


def write_corpus(folder, n=6, rate=16000, seed=0):
    """An audiofolder: n short noise clips with letter transcripts, and metadata.csv."""
    import csv

    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"clip{i}.wav"
        sf.write(folder / name, 0.1 * rng.standard_normal(int(rate * (0.1 + 0.02 * i))), rate)
        text = " ".join("".join(rng.choice(list(CTC_CHARS), 3)) for _ in range(2))
        rows.append({"file_name": name, "text": text})
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


def whisper_processor(folder):
    """A real WhisperProcessor: byte-level tokenizer (256 bytes + Whisper's special tokens), 1 s log-mel windows."""
    import json

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import WhisperProcessor, WhisperTokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    for token in WHISPER_SPECIALS:
        vocab[token] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token=eot,
                                 eos_token=eot, unk_token=eot, pad_token=eot)
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    extractor = WhisperFeatureExtractor(feature_size=8, chunk_length=1)  # 100 frames
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def tiny_real_whisper(processor, decoder_layers: int = 4, seed: int = 0):
    """A tiny Whisper whose vocabulary, special tokens and generation config match `whisper_processor`."""
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    tok = processor.tokenizer
    eot, sot, notimestamps = (tok.convert_tokens_to_ids(t) for t in
                              ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"))
    config = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=8, d_model=32, encoder_layers=4, decoder_layers=decoder_layers,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=50, max_target_positions=64, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=notimestamps, is_multilingual=False, max_length=64, forced_decoder_ids=None,
    )
    return model


# ---- teachers from the stock configurations (the config classes' defaults are the real checkpoints' flags) --------

from pathlib import Path  # noqa: E402

MULTILINGUAL = Path(__file__).parent / "assets" / "whisper-multilingual"
STOCK_SIZES = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(32,) * 7, num_conv_pos_embeddings=16)
# facebook/wav2vec2-base-960h's character vocabulary (32 symbols, upper case, "|" between words)
BASE_960H_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]


def multilingual_processor(folder):
    """The real multilingual Whisper tokenizer (51,865 tokens, 99 languages) with the stock 80-mel extractor."""
    import lzma
    import shutil

    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_bytes(lzma.open(MULTILINGUAL / "tokenizer.json.xz").read())
    shutil.copy(MULTILINGUAL / "tokenizer_config.json", folder)
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(),
                            tokenizer=WhisperTokenizer.from_pretrained(folder))


def stock_whisper(encoder_layers: int = 2, decoder_layers: int = 4, seed: int = 0):
    """openai/whisper-base's configuration and generation config (multilingual, 80 mels, 30 s windows, its special
    token ids) with only the sizes shrunk; alignment heads in layers 2 and 3 of the decoder."""
    import json

    from transformers import GenerationConfig

    torch.manual_seed(seed)
    base = json.loads((MULTILINGUAL / "config.json").read_text())
    config = WhisperConfig(**{**base, "d_model": 32, "encoder_layers": encoder_layers,
                              "decoder_layers": decoder_layers, "encoder_attention_heads": 2,
                              "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64})
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig.from_pretrained(MULTILINGUAL)
    model.generation_config.alignment_heads = [[2, 0], [decoder_layers - 1, 1]]
    return model


def stock_ctc(config_class, seed: int = 0, **overrides):
    """A CTC model from a config class's defaults (wav2vec2-base-960h, hubert-base, wavlm-base,
    data2vec-audio-base flags: layerdrop 0.1, SpecAugment, group-norm front-end, ...) with only sizes shrunk."""
    from transformers import AutoModelForCTC

    torch.manual_seed(seed)
    return AutoModelForCTC.from_config(config_class(**{**STOCK_SIZES, **overrides})).eval()


def base_960h_processor(folder):
    """A Wav2Vec2Processor like wav2vec2-base-960h's: 32 upper-case characters, no attention mask."""
    import json

    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(BASE_960H_VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    return Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(), tokenizer=tokenizer)


def write_speech_corpus(folder, texts, seconds=None, rate=16000, seed=0, **columns):
    """An audiofolder of noise clips with the given transcripts (and extra metadata columns, one value per row)."""
    import csv

    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(texts):
        length = seconds[i] if seconds is not None else 1.0 + 0.1 * (i % 5)
        sf.write(folder / f"clip{i}.wav", 0.1 * rng.standard_normal(int(rate * length)), rate)
        rows.append({"file_name": f"clip{i}.wav", "text": text, **{k: v[i] for k, v in columns.items()}})
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder
