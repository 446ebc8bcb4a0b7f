"""Distil a real Whisper checkpoint into a 2-decoder-layer student on a locally synthesised corpus.

    python examples/distil_whisper_local.py --teacher openai/whisper-tiny.en          # with Hub access
    python examples/distil_whisper_local.py --teacher /path/to/local/whisper-tiny.en  # offline

Real checkpoints bring what tiny random configs hide: 30 s log-mel inputs (3,000 frames), forced prefix tokens,
a generation config and a tied output projection. Needs flite or espeak-ng for the corpus.
"""

import argparse

from transformers import WhisperForConditionalGeneration, WhisperProcessor

from hf_asr_distill import DistillationConfig, DistillationTrainer, collator_for, make_student
from hf_asr_distill.demo.corpus import make_corpus
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.evaluation import transcribe_batch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--teacher", default="openai/whisper-tiny.en")
parser.add_argument("--corpus", default="runs/corpus")
parser.add_argument("--output_dir", default="runs/whisper-distil-local")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--alpha_hidden", type=float, default=0.0)
cli = parser.parse_args()

make_corpus(cli.corpus, {"train": (["flite:slt", "flite:rms"], 16), "test": (["flite:awb"], 4)})
processor = WhisperProcessor.from_pretrained(cli.teacher)
teacher = WhisperForConditionalGeneration.from_pretrained(cli.teacher)
student, layer_map = make_student(teacher, decoder_layers=2, freeze_encoder=True)
print("student decoder layers come from teacher layers", layer_map["decoder"])
train, _ = prepare_dataset(load_speech_dataset(cli.corpus, "train"), processor, teacher)
test, _ = prepare_dataset(load_speech_dataset(cli.corpus, "test"), processor, teacher)

args = DistillationConfig(output_dir=cli.output_dir, max_steps=cli.steps, per_device_train_batch_size=4,
                          learning_rate=3e-4, warmup_steps=2, logging_steps=2, save_strategy="no", report_to="none",
                          alpha_hidden=cli.alpha_hidden, seed=0)
trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=processor,
                              train_dataset=train, data_collator=collator_for(processor, student))
trainer.train()
for entry in trainer.state.log_history:
    if "loss" in entry:
        print({k: round(entry[k], 4) for k in ("step", "loss", "loss_ce", "loss_kd", "loss_hidden") if k in entry})

batch = collator_for(processor, student)([test[i] for i in range(len(test))])
batch["max_seconds"] = 30.0
for name, model in (("teacher", trainer.teacher), ("student", trainer.model)):
    for ref, hyp in zip(test["text"], transcribe_batch(model.eval(), processor, batch)):
        print(f"{name:8s} ref: {ref!r}\n{'':8s} hyp: {hyp!r}")
trainer.save_model(cli.output_dir)
