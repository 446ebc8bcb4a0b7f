"""A small English speech corpus synthesised on this machine (flite or espeak-ng), as an `audiofolder`.

It lets the demo, the examples and the benchmarks run with no Hub access. Sentences come from a fixed grammar,
so the same seed always gives the same corpus.
"""

from __future__ import annotations

import csv
import random
import re
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


# A second grammar with none of the first one's nouns and verbs: tests whether a student still recognises words
# it never heard in training (what a teacher's knowledge, passed on by distillation, is for).
_OPEN_SUBJECTS = ["the young pilot", "a nervous singer", "my cousin", "the captain", "our landlord", "the grey cat",
                  "a clever lawyer", "the nurse", "his father", "the gardener", "a famous writer", "the mayor"]
_OPEN_VERBS = ["repaired", "ordered", "borrowed", "noticed", "polished", "described", "delivered", "ignored",
               "measured", "painted over", "returned", "photographed"]
_OPEN_OBJECTS = ["the silver spoon", "a paper map", "the yellow tent", "an empty bottle", "the piano", "a leather coat",
                 "the bridge", "a small statue", "the orange lamp", "a birthday cake", "the station clock",
                 "a wooden ladder"]
_OPEN_TAILS = ["yesterday afternoon", "before dinner", "during the storm", "on monday", "in the morning",
               "without a word", "quite carefully", "at the harbour", "near the castle", "for an hour", "", ""]
GRAMMARS = {"default": (_SUBJECTS, _VERBS, _OBJECTS, _TAILS),
            "open": (_OPEN_SUBJECTS, _OPEN_VERBS, _OPEN_OBJECTS, _OPEN_TAILS)}


def make_sentences(count: int, seed: int = 0, grammar: str = "default") -> list[str]:
    """`count` distinct sentences from a small grammar (about 20,000 possible); 'open' uses other words."""
    rng = random.Random(seed)
    parts = GRAMMARS[grammar]
    seen: dict[str, None] = {}
    while len(seen) < count:
        words = [rng.choice(options) for options in parts]
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


def make_corpus(out_dir: str | Path, splits: dict[str, tuple], seed: int = 0) -> Path:
    """Write an audiofolder: `out_dir/<split>/*.wav` and `out_dir/<split>/metadata.csv` (file_name, text, voice).

    `splits` maps a split name to (voices, utterances per voice) or (voices, utterances per voice, grammar);
    each split gets its own sentences, so test sentences are never seen in training. Existing complete splits
    are kept (re-running is cheap).
    """
    out = Path(out_dir)
    grammar_of = {name: spec[2] if len(spec) > 2 else "default" for name, spec in splits.items()}
    pools = {g: make_sentences(sum(spec[1] * len(spec[0]) for n, spec in splits.items() if grammar_of[n] == g),
                               seed=seed, grammar=g) for g in set(grammar_of.values())}
    for split, (voices, per_voice, *_) in splits.items():
        folder = out / split
        metadata = folder / "metadata.csv"
        pool = pools[grammar_of[split]]
        sentences, pools[grammar_of[split]] = pool[: per_voice * len(voices)], pool[per_voice * len(voices):]
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


# ---- real sentences in several languages (Debian's fortunes), many voices ----------------------------------------

FORTUNES = Path("/usr/share/games/fortunes")
FORTUNE_FOLDERS = {"en": "", "de": "de", "es": "es", "it": "it", "pl": "pl"}  # Debian: fortunes, fortunes-de, ...
# Letters each language's sentences may use (espeak-ng reads digits and symbols in its own way: leave them out).
LETTERS = {"en": "a-zA-Z", "de": "a-zA-ZäöüÄÖÜß", "es": "a-zA-ZáéíóúüñÁÉÍÓÚÜÑ", "it": "a-zA-ZàèéìíòóùÀÈÉÌÒÙ",
           "pl": "a-zA-ZąćęłńóśźżĄĆĘŁŃÓŚŹŻ"}
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "whisper"]


def fortune_sentences(language: str = "en", min_words: int = 5, max_words: int = 16) -> list[str]:
    """Distinct sentences from Debian's fortune files for `language` (en, de, es, it, pl), in a fixed order.

    Only plain sentences are kept: `min_words`-`max_words` words of the language's letters and simple punctuation,
    no digits, symbols or shouting; attributions, verse and ASCII art fall away. Install the Debian packages
    fortunes (English) and fortunes-de, -es, -it, -pl.
    """
    folder = FORTUNES / FORTUNE_FOLDERS[language]
    # (fortunes-it links its files into the English folder too: symbolic links are left out)
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.is_symlink()
                   and p.suffix not in (".dat", ".u8") and not p.name.endswith("-pre"))
    if not files:
        raise RuntimeError(f"No fortune files in {folder}: apt-get install fortunes"
                           f"{'' if language == 'en' else '-' + language}")
    word = f"[{LETTERS[language]}]+(?:['’-][{LETTERS[language]}]+)*"
    sentence = re.compile(rf"^{word}(?:,? {word})*[.!?]$")
    seen: dict[str, None] = {}
    for path in files:
        text = path.read_text(encoding="utf-8", errors="ignore")
        for fortune in re.split(r"\n%\n", text):
            lines = [line.strip() for line in fortune.splitlines() if not line.strip().startswith("--")]
            for candidate in re.split(r"(?<=[.!?])\s+", " ".join(lines)):
                candidate = candidate.strip().replace("’", "'")
                words = candidate.split()
                if (min_words <= len(words) <= max_words and sentence.match(candidate)
                        and not any(w.isupper() and len(w) > 1 for w in words)):
                    seen[candidate] = None
    return list(seen)


def espeak_voices(language: str) -> list[str]:
    """espeak-ng voices for a language: its base voice in every variant ('espeak-ng:de+m3')."""
    base = {"en": "en-us"}.get(language, language)
    return [f"espeak-ng:{base}+{variant}" for variant in ESPEAK_VARIANTS]


def voice_language(voice: str) -> str:
    """The language a voice speaks: 'en' for flite, the espeak-ng voice's language otherwise."""
    engine, _, name = voice.partition(":")
    return "en" if engine == "flite" else re.split(r"[-+]", name)[0]


def make_sentence_corpus(out_dir: str | Path, splits: dict[str, tuple[list[str], list[str]]]) -> Path:
    """An audiofolder from given sentences: `splits` maps a split name to (voices, sentences); the sentences are
    spoken by the voices in turn. metadata.csv holds file_name, text, voice and language. Complete splits are kept
    (re-running is cheap); a split's metadata is written last, so an interrupted split is redone."""
    out = Path(out_dir)
    for split, (voices, sentences) in splits.items():
        folder, metadata = out / split, out / split / "metadata.csv"
        if metadata.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, text in enumerate(sentences):
            voice = voices[i % len(voices)]
            name = f"{i:05d}_{re.sub(r'[^A-Za-z0-9]+', '_', voice)}.wav"
            synthesize(text, voice, folder / name)
            rows.append({"file_name": name, "text": text, "voice": voice, "language": voice_language(voice)})
        with open(metadata.with_suffix(".tmp"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file_name", "text", "voice", "language"])
            writer.writeheader()
            writer.writerows(rows)
        metadata.with_suffix(".tmp").rename(metadata)
    return out
