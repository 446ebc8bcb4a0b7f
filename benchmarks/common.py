"""Shared set-up for the benchmark scripts: a local corpus, a teacher, prepared data, timing helpers."""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Callable

import torch
from transformers import AutoProcessor

from hf_asr_distill.demo.corpus import make_corpus
from hf_asr_distill.data import load_speech_dataset, prepare_dataset
from hf_asr_distill.student import load_model


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--teacher", default="openai/whisper-tiny.en", help="Hub id or local path")
    parser.add_argument("--corpus", default="runs/bench_corpus", help="synthesised here if missing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    return parser


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def corpus(path: str, voices=("flite:slt", "flite:rms"), per_voice: int = 8, test_voices=("flite:awb",),
           per_test_voice: int = 4) -> str:
    return str(make_corpus(path, {"train": (list(voices), per_voice), "test": (list(test_voices), per_test_voice)}))


def teacher_and_data(name: str, corpus_dir: str, split: str = "train"):
    processor = AutoProcessor.from_pretrained(name)
    teacher = load_model(name, dtype=torch.float32)
    data, _ = prepare_dataset(load_speech_dataset(corpus_dir, split), processor, teacher)
    return teacher, processor, data


def timed(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> float:
    """Fastest of `repeats` runs of `fn` after `warmup` runs."""
    return interleaved({"fn": fn}, repeats, warmup, device)["fn"]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str) -> dict[str, float]:
    """Fastest of `repeats` runs of each function, the functions taking turns so that drifts in machine speed
    (other load, frequency scaling) hit all of them alike; `warmup` untimed turns first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
