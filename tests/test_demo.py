"""The README's main job, end to end: synthesise speech, distil the shipped teacher, print the table."""

import pytest

from hf_asr_distill.cli import main


@pytest.mark.slow
def test_demo_runs_offline_and_the_student_is_smaller(tmp_path, capsys):
    main(["demo", "--output_dir", str(tmp_path), "--corpus_per_voice", "12", "--max_train_samples", "48",
          "--max_eval_samples", "16", "--max_steps", "30"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| teacher") or line.startswith("| student")}
    teacher, student = rows["teacher"], rows["student"]
    assert float(student[0]) < float(teacher[0])  # params
    assert float(student[1]) < float(teacher[1])  # size
    assert float(student[-1].rstrip("x")) > 0  # a speed-up is reported (timings are never pass/fail here)
    assert (tmp_path / "student" / "model.safetensors").exists()
    assert (tmp_path / "student" / "report" / "report.png").exists()
