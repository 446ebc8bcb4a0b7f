"""Student speed: teacher vs students of several sizes, latency and RTFx at batch 1 and 8, params and size.

    python benchmarks/inference.py --teacher openai/whisper-tiny.en [--device cuda] [--dtype bf16]

Whisper models all generate the same number of tokens (min = max = --tokens), so the timing compares the models,
not how much an untrained student happens to write. The CTC rows use the Wav2Vec2-base shape (12 x 768, random
weights: speed does not depend on training) shrunk to 6 and 2 layers.
"""

from __future__ import annotations

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

from common import base_parser, corpus, machine, table, teacher_and_data, timed
from hf_asr_distill import collator_for, make_student
from hf_asr_distill.evaluation import count_parameters, size_on_disk
from hf_asr_distill.teacher import TEACHER_DTYPES as DTYPES


def whisper_models(teacher):
    yield "teacher (4 enc / 4 dec)", teacher
    for enc, dec in ((4, 2), (4, 1), (2, 2)):
        yield f"student ({enc} enc / {dec} dec)", make_student(teacher, encoder_layers=enc, decoder_layers=dec)[0]


def ctc_models():
    teacher = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=32)).eval()
    yield "wav2vec2-base shape (12 layers)", teacher
    for layers in (6, 2):
        yield f"student ({layers} layers)", make_student(teacher, num_hidden_layers=layers)[0]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=24, help="tokens each Whisper model generates")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="dtype every model runs in")
    cli = parser.parse_args()
    device, dtype = torch.device(cli.device), DTYPES[cli.dtype]
    teacher, processor, data = teacher_and_data(cli.teacher, corpus(cli.corpus), "train")
    rows = [data[i] for i in range(8)]
    seconds = {1: rows[0]["audio_seconds"], 8: sum(r["audio_seconds"] for r in rows)}
    out_rows = []
    for name, model in whisper_models(teacher):
        model = model.to(device, dtype).eval()
        collate = collator_for(processor, model)
        timings = {}
        for bs in (1, 8):
            feats = collate(rows[:bs])["input_features"].to(device, dtype)

            def run():
                with torch.inference_mode():
                    model.generate(feats, min_new_tokens=cli.tokens, max_new_tokens=cli.tokens)

            timings[bs] = timed(run, cli.repeats, cli.warmup, cli.device)
        out_rows.append(_row(name, model, timings, seconds))
    extractor = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    audio = [{"input_values": extractor(_audio(r), sampling_rate=16000)["input_values"][0]} for r in rows]
    for name, model in ctc_models():
        model = model.to(device, dtype).eval()
        timings = {}
        for bs in (1, 8):
            batch = extractor.pad(audio[:bs], return_tensors="pt", return_attention_mask=True)

            def run():
                with torch.inference_mode():
                    model(batch["input_values"].to(device, dtype), attention_mask=batch["attention_mask"].to(device))

            timings[bs] = timed(run, cli.repeats, cli.warmup, cli.device)
        out_rows.append(_row(name, model, timings, seconds))
    _print(out_rows, cli)


def _audio(row) -> list[float]:
    """A waveform of the row's duration (the CTC models are timed on audio of the corpus' lengths)."""
    return torch.randn(int(row["audio_seconds"] * 16000)).mul(0.1).tolist()


def _row(name, model, timings, seconds):
    params = count_parameters(model)["total"]
    size = size_on_disk(model)["fp32"]
    return [name, params, size, timings[1], seconds[1] / timings[1], timings[8], seconds[8] / timings[8]]


def _print(rows, cli):
    print(f"\n{machine()}; {cli.dtype}; Whisper: {cli.tokens} generated tokens per utterance, 30 s windows\n")
    groups = [rows[:4], rows[4:]]
    for group in groups:
        base1, base8 = group[0][3], group[0][5]
        print(table(["model", "params (M)", "size (MB)", "latency b=1 (ms)", "RTFx b=1", "speed-up b=1",
                     "latency b=8 (ms/batch)", "RTFx b=8", "speed-up b=8"],
                    [[n, f"{p / 1e6:.1f}", f"{s / 1e6:.0f}", f"{1000 * t1:.0f}", f"{r1:.1f}", f"{base1 / t1:.2f}x",
                      f"{1000 * t8:.0f}", f"{r8:.1f}", f"{base8 / t8:.2f}x"] for n, p, s, t1, r1, t8, r8 in group]))
        print()


if __name__ == "__main__":
    main()
