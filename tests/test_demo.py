"""The README's main job, end to end: synthesise speech, distil the shipped teacher, print the table."""

import pytest

from hf_asr_distill.cli import main


@pytest.mark.slow
def test_demo_runs_offline_and_the_student_is_smaller(tmp_path, capsys):
    main(["demo", "--output_dir", str(tmp_path), "--corpus_per_voice", "12", "--max_train_samples", "48",
          "--max_eval_samples", "16", "--max_steps", "30"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model"))
    names = [c.strip() for c in header.split("|")[1:-1]]
    rows = {cells[0]: dict(zip(names, cells)) for cells in (
        [c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
        if line.startswith("| teacher") or line.startswith("| student"))}
    teacher, student = rows["teacher"], rows["student"]
    assert float(student["params (M)"]) < float(teacher["params (M)"])
    assert float(student["size (MB)"]) < float(teacher["size (MB)"])
    assert float(student["speed-up"].rstrip("x")) > 0  # reported (timings are never pass/fail here)
    assert (tmp_path / "student" / "model.safetensors").exists()
    assert (tmp_path / "student" / "report" / "report.png").exists()
