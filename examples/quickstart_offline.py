"""Distil a tiny Whisper teacher and a tiny Wav2Vec2 CTC teacher for a few steps, fully offline.

The models are random and small, so this runs in seconds anywhere; it shows the API and the logged loss terms.
    python examples/quickstart_offline.py
"""

import numpy as np
from transformers import (
    Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, WhisperConfig, WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student

rng = np.random.default_rng(0)


def run(teacher, student, features, rows, **kd):
    args = DistillationConfig(output_dir="runs/quickstart", max_steps=5, per_device_train_batch_size=4,
                              learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
                              disable_tqdm=True, **kd)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows,
                                  data_collator=collator_for(features, student))
    trainer.train()
    for entry in trainer.state.log_history:
        if "loss" in entry:
            print({k: entry[k] for k in ("step", "loss", "loss_ce", "loss_kd", "loss_hidden") if k in entry})


print("== Whisper: token-level KD + decoder hidden states ==")
whisper = WhisperForConditionalGeneration(WhisperConfig(
    vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=4, decoder_layers=4, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
    max_target_positions=32, pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2))
student, layer_map = make_student(whisper, decoder_layers=2, freeze_encoder=True)
print("student decoder layers copied from teacher layers", layer_map["decoder"])
rows = [{"input_features": rng.standard_normal((8, 32)).astype(np.float32),
         "labels": [2, *rng.integers(4, 64, size=6).tolist(), 3]} for _ in range(16)]
run(whisper, student, WhisperFeatureExtractor(feature_size=8), rows, alpha_hidden=1.0)

print("== Wav2Vec2 CTC: frame-level KD + hidden states through a projection (narrower student) ==")
ctc = Wav2Vec2ForCTC(Wav2Vec2Config(
    vocab_size=12, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16, 16), conv_stride=(4, 4), conv_kernel=(8, 4), num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=2, do_stable_layer_norm=True, feat_extract_norm="layer",
    ctc_loss_reduction="mean", pad_token_id=0, layerdrop=0.0))
student, layer_map = make_student(ctc, num_hidden_layers=2, hidden_size=16, intermediate_size=32)
rows = [{"input_values": rng.standard_normal(1600).astype(np.float32),
         "labels": rng.integers(1, 12, size=4).tolist()} for _ in range(16)]
run(ctc, student, Wav2Vec2FeatureExtractor(return_attention_mask=True), rows, alpha_hidden=1.0,
    hidden_loss="l1_cosine")
