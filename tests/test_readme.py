"""The README's Trainer script runs as written, with local stand-ins for the teacher and the dataset."""

import re
from pathlib import Path

from conftest import tiny_real_whisper, whisper_processor, write_corpus
from hf_asr_distill import DistillationTrainer

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_script() -> str:
    text = README.read_text()
    start = text.index("<!-- trainer-script")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_readme_trainer_script_runs(tmp_path, monkeypatch):
    processor = whisper_processor(tmp_path / "tok")
    teacher = tiny_real_whisper(processor)
    teacher.save_pretrained(tmp_path / "teacher")
    processor.save_pretrained(tmp_path / "teacher")
    write_corpus(tmp_path / "data" / "train", n=6)
    write_corpus(tmp_path / "data" / "test", n=2, seed=1)
    pushed = []
    monkeypatch.setattr(DistillationTrainer, "push_to_hub", lambda self, *a, **k: pushed.append(self))
    monkeypatch.chdir(tmp_path)
    script = readme_script()
    script = script.replace('"openai/whisper-tiny.en"', repr(str(tmp_path / "teacher")))
    script = script.replace('"path/to/audiofolder"', repr(str(tmp_path / "data")))
    script = re.sub(r"max_steps=\d+", "max_steps=4", script).replace("eval_steps=500", "eval_steps=2")
    script = script.replace("eval_strategy=", "report_to='none', generation_max_length=12, logging_steps=1, eval_strategy=")
    namespace: dict = {}
    exec(compile(script, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert pushed == [trainer]
    assert trainer.share_encoder and trainer.layer_maps == {}  # output-layer KD only: the measured best for 4/2
    evals = [e for e in trainer.state.log_history if "eval_wer" in e]
    assert len(evals) == 2 and all("eval_runaway" in e for e in evals)
    assert [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e]
    assert not any("loss_hidden" in e for e in trainer.state.log_history)
