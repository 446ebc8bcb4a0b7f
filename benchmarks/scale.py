"""Scale: data preparation, the teacher-output cache and teacher passes on corpora of many rows.

    python benchmarks/scale.py --rows 10000 100000            # preparation, cache build/start-up/reads per size
    python benchmarks/scale.py --processes --rows 2000         # 1 vs 2 processes (torchrun, gloo): same outputs?

The manifest reuses 200 short synthetic clips (0.2-0.6 s of noise) under distinct ids, so row counts grow without
the disk. Each measurement runs in a fresh process and reports its peak resident memory (ru_maxrss), so memory is
comparable across sizes. The teacher is a small CTC model built in code: the cache figures measure the cache's
machinery (shards, index, reads), not a real teacher's compute: wav2vec2-base-960h's configuration (20 ms frames,
32 symbols) with sizes shrunk.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the small models the tests build in code

from common import machine, table  # noqa: E402


def manifest(folder: Path, rows: int) -> Path:
    """metadata.csv with `rows` rows over 200 distinct clips (made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    clips = folder / "clips"
    if not clips.exists():
        clips.mkdir()
        for i in range(200):
            sf.write(clips / f"c{i}.wav", 0.1 * rng.standard_normal(int(16000 * (0.2 + 0.4 * i / 200))), 16000)
    path = folder / f"rows_{rows}" / "metadata.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        letters = "ETAONIHSRD"
        pick = random.Random(0)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "text"])
            for i in range(rows):
                words = " ".join("".join(pick.choice(letters) for _ in range(3)) for _ in range(2))
                writer.writerow([f"../clips/c{i % 200}.wav", words])
    return path.parent


def peak_mb() -> float:
    """Peak resident memory, file-backed pages included (the cache's shards are memory-mapped)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anon_mb() -> float:
    """Anonymous (heap) memory now: what the process itself holds, without the mapped shard pages the kernel can
    drop at any time."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def step(kind: str, folder: str, work: str) -> dict:
    """One measurement, in this (fresh) process."""
    import torch
    from conftest import base_960h_processor, stock_ctc
    from transformers import Wav2Vec2Config

    from hf_asr_distill.cache import CachedCollator, TeacherCache, cache_teacher
    from hf_asr_distill.data import collator_for, load_speech_dataset, prepare_dataset
    from hf_asr_distill.families import family_of

    # wav2vec2-base-960h's configuration, sizes shrunk: its 20 ms frames and 32-symbol vocabulary
    processor, teacher = base_960h_processor(Path(work) / "processor"), stock_ctc(Wav2Vec2Config)
    start = time.perf_counter()
    if kind in ("prepare", "prepare_cached"):
        ds, stats = prepare_dataset(load_speech_dataset(folder), processor, teacher, on_error="skip")
        return {"rows": len(ds), "seconds": time.perf_counter() - start, "peak_mb": peak_mb()}
    if kind == "stream":
        ds, stats = prepare_dataset(load_speech_dataset(folder, streaming=True), processor, teacher, features=False,
                                    on_error="skip")
        rows = sum(1 for _ in ds)
        return {"rows": rows, "seconds": time.perf_counter() - start, "peak_mb": peak_mb()}
    ds, _ = prepare_dataset(load_speech_dataset(folder), processor, teacher, on_error="skip")
    cache_dir = Path(work) / "cache"
    if kind == "cache_build":
        start = time.perf_counter()
        cache_teacher(teacher, processor, ds, cache_dir, k=8, hidden_layers={"encoder": [2]}, batch_size=128,
                      progress=False, shard_bytes=200_000_000)
        return {"rows": len(ds), "seconds": time.perf_counter() - start, "peak_mb": peak_mb(),
                "shards": len(list(cache_dir.glob("shard_*"))),
                "mb": sum(f.stat().st_size for f in cache_dir.glob("shard_*")) / 1e6}
    start = time.perf_counter()
    cache = TeacherCache(cache_dir)
    cache.check(teacher, ds, processor)
    opened = time.perf_counter() - start
    collate = CachedCollator(collator_for(processor, teacher), cache,
                             lambda batch: family_of(teacher).positions(teacher, batch))
    plain = collator_for(processor, teacher)
    rng = random.Random(0)
    batches = [[ds[i] for i in rng.sample(range(len(ds)), 16)] for _ in range(20)]
    reads = []
    for rows in batches:
        t0 = time.perf_counter()
        collate(rows)
        t1 = time.perf_counter()
        plain(rows)
        reads.append((t1 - t0) - (time.perf_counter() - t1))  # the cache's part of collating
    del torch
    return {"rows": len(ds), "open_seconds": opened, "read_ms_per_batch": 1000 * float(np.median(reads)),
            "peak_mb": peak_mb(), "anon_mb": anon_mb()}


ONEDNN_CACHE = 8


def fresh(kind: str, folder: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--step", kind, str(folder), str(work)]
    # On CPUs, oneDNN caches compiled kernels per input shape (1,024 by default) and each batch of clips has its
    # own length: that cache, not the package, grows with the batches until it is full. A small cache isolates
    # what the package holds (--onednn_cache 1024 measures torch's default).
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(ONEDNN_CACHE)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sizes(rows_list: list[int], root: Path) -> None:
    results = {}
    for rows in rows_list:
        folder = manifest(root, rows)
        work = Path(tempfile.mkdtemp(dir=root))
        shutil.rmtree(Path.home() / ".cache" / "huggingface" / "datasets" / "csv", ignore_errors=True)
        results[rows] = {kind: fresh(kind, folder, work) for kind in
                         ("prepare", "prepare_cached", "stream", "cache_build", "cache_read")}
        print(json.dumps({rows: results[rows]}), flush=True)
    head = ["rows", "prepare rows/s (first)", "peak MB", "prepare rows/s (cached rerun)", "stream rows/s",
            "peak MB", "cache build rows/s", "shards", "cache MB", "cache start-up s", "cache read ms/batch of 16",
            "peak MB (anonymous)"]
    lines = []
    for rows, r in results.items():
        lines.append([f"{rows:,}", f"{rows / r['prepare']['seconds']:,.0f}", f"{r['prepare']['peak_mb']:.0f}",
                      f"{rows / r['prepare_cached']['seconds']:,.0f}", f"{rows / r['stream']['seconds']:,.0f}",
                      f"{r['stream']['peak_mb']:.0f}", f"{rows / r['cache_build']['seconds']:,.0f}",
                      r["cache_build"]["shards"], f"{r['cache_build']['mb']:.0f}",
                      f"{r['cache_read']['open_seconds']:.2f}", f"{r['cache_read']['read_ms_per_batch']:.1f}",
                      f"{r['cache_read']['peak_mb']:.0f} ({r['cache_read']['anon_mb']:.0f})"])
    print(f"\n{machine()}; oneDNN kernel cache: {ONEDNN_CACHE} entries\n")
    print(table(head, lines))


def processes(rows: int, root: Path) -> None:
    """The same teacher passes with 1 and 2 processes: outputs compared, wall time measured."""
    folder = manifest(root, rows)
    worker = HERE.parent / "tests" / "pass_worker.py"
    times, summaries = {}, {}
    for n in (1, 2):
        out = Path(tempfile.mkdtemp(dir=root))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
               "--master_port=29617", str(worker), str(out), str(folder)]
        for mode in ("pseudo", "cache", "evaluate"):
            start = time.perf_counter()
            subprocess.run(cmd + [mode], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                               "BATCH": "16"})
            times[(n, mode)] = time.perf_counter() - start
            summaries[(n, mode)] = json.loads((out / "summary.json").read_text())[mode]
    lines = [[mode, f"{times[(1, mode)]:.1f}", f"{times[(2, mode)]:.1f}", f"{times[(1, mode)] / times[(2, mode)]:.2f}",
              "yes" if summaries[(1, mode)] == summaries[(2, mode)] else "NO"]
             for mode in ("pseudo", "cache", "evaluate")]
    print(f"\n{rows:,} rows; {machine()}; one thread per process\n")
    print(table(["teacher pass", "1 process (s)", "2 processes (s)", "speed-up", "identical outputs"], lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        print(json.dumps(step(sys.argv[2], sys.argv[3], sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--root", default="runs/scale")
    parser.add_argument("--processes", action="store_true", help="compare 1 and 2 processes instead")
    parser.add_argument("--onednn_cache", type=int, default=8, help="oneDNN kernel cache entries (CPU)")
    cli = parser.parse_args()
    global ONEDNN_CACHE
    ONEDNN_CACHE = cli.onednn_cache
    root = Path(cli.root)
    root.mkdir(parents=True, exist_ok=True)
    if cli.processes:
        processes(cli.rows[0], root)
    else:
        sizes(cli.rows, root)


if __name__ == "__main__":
    main()
