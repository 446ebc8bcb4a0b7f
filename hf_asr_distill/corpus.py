"""A small English speech corpus synthesised on this machine (flite or espeak-ng), as an `audiofolder`.

It lets the demo, the examples and the benchmarks run with no Hub access. Sentences come from a fixed grammar,
so the same seed always gives the same corpus.
"""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
from pathlib import Path

_SUBJECTS = ["the old man", "a young girl", "my brother", "the teacher", "our neighbour", "the small dog",
             "a tired farmer", "the doctor", "her mother", "the driver", "a quiet student", "the baker"]
_VERBS = ["opened", "painted", "carried", "found", "cleaned", "watched", "moved", "sold", "fixed", "closed",
          "bought", "washed"]
_OBJECTS = ["the red door", "a wooden box", "the kitchen window", "an old car", "the green boat", "a heavy bag",
            "the garden gate", "a broken chair", "the blue table", "a long letter", "the front wall", "a new bike"]
_TAILS = ["this morning", "last night", "before lunch", "after the rain", "on sunday", "in the evening",
          "with great care", "very slowly", "at the market", "near the river", "", ""]


def make_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct sentences from a small grammar (about 20,000 possible)."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
        seen[" ".join(w for w in words if w)] = None
    return list(seen)


def available_voices() -> list[str]:
    """Voices this machine can synthesise with, as 'engine:voice'."""
    voices = []
    if shutil.which("flite"):
        voices += [f"flite:{v}" for v in ("slt", "kal", "awb", "rms")]
    if shutil.which("espeak-ng"):
        voices += [f"espeak-ng:{v}" for v in ("en-us", "en-gb", "en-gb-scotland", "en-029")]
    return voices


def synthesize(text: str, voice: str, path: Path) -> None:
    """Speak `text` with `voice` ('flite:slt', 'espeak-ng:en-us') into the WAV file `path`."""
    engine, _, name = voice.partition(":")
    if engine == "flite":
        cmd = ["flite", "-voice", name, "-t", text, "-o", str(path)]
    elif engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", name, "-w", str(path), text]
    else:
        raise ValueError(f"Unknown speech engine {engine!r} in voice {voice!r}; use flite:NAME or espeak-ng:NAME.")
    if shutil.which(cmd[0]) is None:
        raise RuntimeError(f"{cmd[0]} is not installed; on Debian/Ubuntu: apt-get install {cmd[0]}")
    subprocess.run(cmd, check=True, capture_output=True)


def make_corpus(out_dir: str | Path, splits: dict[str, tuple[list[str], int]], seed: int = 0) -> Path:
    """Write an audiofolder: `out_dir/<split>/*.wav` and `out_dir/<split>/metadata.csv` (file_name, text, voice).

    `splits` maps a split name to (voices, utterances per voice); each split gets its own sentences, so test
    sentences are never seen in training. Existing complete splits are kept (re-running is cheap).
    """
    out = Path(out_dir)
    pool = make_sentences(sum(per_voice * len(voices) for voices, per_voice in splits.values()), seed=seed)
    for split, (voices, per_voice) in splits.items():
        folder = out / split
        metadata = folder / "metadata.csv"
        sentences, pool = pool[: per_voice * len(voices)], pool[per_voice * len(voices):]
        if metadata.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for v, voice in enumerate(voices):
            for i in range(per_voice):
                text = sentences[v * per_voice + i]
                name = f"{voice.replace(':', '_')}_{i:04d}.wav"
                synthesize(text, voice, folder / name)
                rows.append({"file_name": name, "text": text, "voice": voice})
        with open(metadata.with_suffix(".tmp"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file_name", "text", "voice"])
            writer.writeheader()
            writer.writerows(rows)
        metadata.with_suffix(".tmp").rename(metadata)  # written last: a split with metadata is complete
    return out
