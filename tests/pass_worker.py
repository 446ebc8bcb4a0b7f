"""Teacher passes (pseudo-labelling, cache building, evaluation) on a tiny CTC teacher; run alone or under torchrun.

    python pass_worker.py OUT_DIR CORPUS_DIR [pseudo|cache|evaluate|all]

SLOW=seconds makes each pseudo-labelling / cache batch that long; HANG_AFTER=n makes process 1 stop after n cache
batches and wait to be killed (so a test kills it at a known point, however fast the machine).
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from hf_asr_distill.distributed import process_state  # noqa: E402

import hf_asr_distill.pseudo_label as pl  # noqa: E402
from conftest import ctc_processor, tiny_ctc  # noqa: E402
from hf_asr_distill.cache import TeacherCache, cache_teacher  # noqa: E402
from hf_asr_distill.data import load_speech_dataset, prepare_dataset  # noqa: E402
from hf_asr_distill.evaluation import evaluate_model  # noqa: E402


def main(out: Path, corpus: str, mode: str) -> None:
    state = process_state()
    out.mkdir(parents=True, exist_ok=True)
    processor, teacher = ctc_processor(out), tiny_ctc()
    raw = load_speech_dataset(corpus)
    summary = {"world": state.num_processes}
    if mode in ("pseudo", "all"):
        slow = float(os.environ.get("SLOW", 0))
        if slow:
            real = pl.transcribe_batch
            pl.transcribe_batch = lambda *a, **k: time.sleep(slow) or real(*a, **k)
        labelled, stats = pl.pseudo_label(teacher, processor, raw, max_wer=None, batch_size=int(
            os.environ.get("BATCH", 2)), work_dir=out / "progress", progress=False)
        summary["pseudo"] = list(labelled["pseudo_text"])
    (out / f"pid_rank{state.process_index}").write_text(str(os.getpid()))
    if mode in ("cache", "all"):
        prepared, _ = prepare_dataset(raw, processor, teacher)
        if float(os.environ.get("SLOW", 0)):
            import hf_asr_distill.cache as cache_module

            real_outputs, calls = cache_module._teacher_outputs, []

            def slow_outputs(*args, **kwargs):
                calls.append(1)
                if state.process_index == 1 and len(calls) > int(os.environ.get("HANG_AFTER", 10**9)):
                    (out / "hanging_rank1").write_text("")
                    time.sleep(600)
                time.sleep(float(os.environ["SLOW"]))
                return real_outputs(*args, **kwargs)

            cache_module._teacher_outputs = slow_outputs
        cache = cache_teacher(teacher, processor, prepared, out / "cache", k=4, hidden_layers={"encoder": [2]},
                              batch_size=int(os.environ.get("BATCH", 2)), progress=False, shard_bytes=1)
        ids = sorted(cache._where)
        batch = TeacherCache(out / "cache")._read_examples(ids)
        summary["cache"] = {str(i): {k: v.float().sum().item() for k, v in sorted(batch[i].items())} for i in ids}
    if mode in ("evaluate", "all"):
        prepared, _ = prepare_dataset(raw, processor, teacher)
        result = evaluate_model("teacher", teacher, processor, prepared, batch_size=2, warmup=0, repeats=1,
                                progress=False)
        summary["evaluate"] = {"wer": result.scores["wer"], "predictions": result.predictions}
    if state.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary))
    state.wait_for_everyone()
    # skip the interpreter's teardown, where gloo's worker threads can abort a finished run (see ddp_worker.finish)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "all")
