"""Teacher-output cache: the top-k of the teacher's softened distribution, chosen hidden states and (Whisper)
encoder outputs, computed once and read by the trainer instead of running the teacher.

Layout (safetensors only, no pickle): `manifest.json` (fingerprints, settings, completeness), bounded shards
(`shard_p<process>_<n>.safetensors`, about `shard_bytes` and at most `SHARD_EXAMPLES` examples each) and one index
per writing process (`index.p<process>.jsonl`: a line per shard naming its examples, their audio and label digests,
the shard's size and, for each stored output, where each example's rows start). A shard is packed: one tensor per
output (`logprobs`, `indices`, `hidden.<stack>.<layer>`, `encoder`), the examples' rows one after another, so its
header is a few entries whatever the number of examples, and reading an example is a slice of each tensor. A
shard is written to a temporary name and renamed before its index line is written, so an interrupted run resumes
after its last complete shard; readers read the index once and never open a shard to find an example. Under
`accelerate launch` each process caches its share of the rows into shards of its own.

Top-k and the tail: for each label token (Whisper) or audio frame (CTC) the cache keeps the indices of the k most
likely tokens and their log-probabilities at temperature T (fp16). The KD loss then compares teacher and student
on k + 1 buckets, the k tokens and one bucket for all other tokens, whose mass is 1 - sum of the k probabilities.
That is exactly the divergence between the two distributions coarsened to those buckets: it never exceeds the
full-vocabulary divergence and equals it when the teacher puts no mass outside its top k.

With `k=0` and `encoder_outputs=True` the cache holds only the (Whisper) encoder outputs: a frozen student encoder
shared with the teacher then never runs, and the teacher's decoder runs live, at any temperature, on any labels
(pseudo-labels included) of the same audio.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from .data import collator_for, row_loader
from .distributed import process_state, share_of
from .families import FAMILIES, Family, family_of
from .losses import bucket_logprobs, student_buckets  # noqa: F401 - the k + 1 buckets the cached KD compares

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: packed shards (one tensor per output, offsets in the index)
MANIFEST = "manifest.json"
SHARD_BYTES = 1_000_000_000
# A reader keeps up to OPEN_SHARDS shards open (memory maps); capping the examples per shard bounds what one index
# line and one shard's offsets hold, whatever the number of rows.
SHARD_EXAMPLES = 1024
OPEN_SHARDS = 32
CACHED_PREFIX = "cached_"  # batch keys of cached tensors added by CachedCollator
FAMILY_KD_PER_LABEL = {family.name: family.kd_per_label_token for family in FAMILIES}


# ---- fingerprints ----------------------------------------------------------------------------------------------


def teacher_fingerprint(teacher: PreTrainedModel) -> str:
    """The teacher's config, every tensor's name, shape and dtype, and a sample of values from 16 spaced tensors:
    enough to tell checkpoints apart without reading every weight on every process."""
    h = hashlib.sha256(json.dumps(teacher.config.to_dict(), sort_keys=True, default=str).encode())
    state = teacher.state_dict()
    names = sorted(state)
    for name in names:
        h.update(f"{name}{tuple(state[name].shape)}{state[name].dtype}".encode())
    for name in names[:: max(1, len(names) // 16)]:
        flat = state[name].detach().flatten()
        sample = torch.cat([flat[:64], flat[-64:]]).float().cpu()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def fingerprint(teacher: PreTrainedModel, processor: Any, settings: dict) -> str:
    """Hash of the teacher (`teacher_fingerprint`), the preprocessing and the cache settings. The data is checked
    row by row instead: each row's audio digest when the cache is opened, its labels' digest when a batch is read."""
    h = hashlib.sha256(teacher_fingerprint(teacher).encode())
    extractor = getattr(processor, "feature_extractor", processor)
    h.update(json.dumps(extractor.to_dict(), sort_keys=True, default=str).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def audio_digest(value: Any) -> str:
    """A short digest of one row's audio value: the path (and size) of a file, or the hash of embedded bytes."""
    if isinstance(value, dict) and value.get("bytes"):
        return hashlib.blake2b(value["bytes"], digest_size=8).hexdigest()
    path = value.get("path") if isinstance(value, dict) else value
    size = os.path.getsize(path) if isinstance(path, str) and os.path.exists(path) else -1
    return hashlib.blake2b(f"{path}:{size}".encode(), digest_size=8).hexdigest()


def labels_digest(labels: list[int]) -> str:
    """A short digest of one row's label ids (what the teacher was forced along)."""
    return hashlib.blake2b(json.dumps([int(i) for i in labels]).encode(), digest_size=8).hexdigest()


def _rows(dataset: Any, audio_column: str, chunk: int = 2048) -> tuple[list[int], list[str]]:
    """Example ids and audio digests of every row, read from two columns a chunk at a time, the audio as stored
    (its path or bytes) and never decoded: memory stays flat however many rows there are."""
    from datasets import Audio

    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
    ids = list(plain["example_id"]) if "example_id" in plain.column_names else list(range(len(plain)))
    feature = getattr(plain, "features", {}).get(audio_column)
    if isinstance(feature, Audio) and feature.decode:
        plain = plain.cast_column(audio_column, Audio(sampling_rate=feature.sampling_rate, decode=False))
    digests = []
    for start in range(0, len(plain), chunk):
        digests += [audio_digest(v) for v in plain[start: start + chunk][audio_column]]
    return [int(i) for i in ids], digests


# ---- writing ---------------------------------------------------------------------------------------------------


class ShardWriter:
    """Buffers examples' tensors and writes them as shards of about `limit` bytes, each followed by its index line."""

    def __init__(self, folder: Path, process: int, limit: int) -> None:
        self.folder, self.process, self.limit = folder, process, limit
        self.index = folder / f"index.p{process:03d}.jsonl"
        self.count = len(self.index.read_text().splitlines()) if self.index.exists() else 0
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.examples: list[int] = []
        self.digests: list[str] = []
        self.labels: list[str] = []
        self.size = 0

    def add(self, example: int, digest: str, labels: str, tensors: dict[str, torch.Tensor]) -> None:
        for name, value in tensors.items():
            self.parts.setdefault(name, []).append(value)
            self.size += value.numel() * value.element_size()
        self.examples.append(example)
        self.digests.append(digest)
        self.labels.append(labels)

    def end_batch(self) -> None:
        """Shards end at batch boundaries: write one once the buffer reaches the size or example limit."""
        if self.size >= self.limit or len(self.examples) >= SHARD_EXAMPLES:
            self.flush()

    def flush(self) -> None:
        if not self.examples:
            return
        name = f"shard_p{self.process:03d}_{self.count:05d}.safetensors"
        offsets = {what: [0, *itertools.accumulate(part.shape[0] for part in parts)]
                   for what, parts in self.parts.items()}
        # each output's parts are released as soon as they are joined, so they and the joined tensors are never all held
        packed = {what: torch.cat(self.parts.pop(what)) for what in list(self.parts)}
        save_file(packed, str(self.folder / f"{name}.tmp"))
        del packed
        os.replace(self.folder / f"{name}.tmp", self.folder / name)
        line = {"shard": name, "bytes": (self.folder / name).stat().st_size, "examples": self.examples,
                "audio": self.digests, "labels": self.labels, "offsets": offsets}
        with open(self.index, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.count += 1
        self.parts, self.examples, self.digests, self.labels, self.size = {}, [], [], [], 0


def read_index(folder: Path) -> list[dict]:
    """Every complete shard's index line, from every process's index (a line cut by a kill is ignored)."""
    lines = []
    for path in sorted(folder.glob("index.p*.jsonl")):
        for text in path.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return lines


@torch.no_grad()
def _teacher_outputs(family: Family, teacher: PreTrainedModel, batch: dict, want_hidden: bool) -> Any:
    inputs = {k: v.to(teacher.device) for k, v in family.model_inputs(teacher, batch).items()}
    if family.feature_key not in inputs:
        raise ValueError("The teacher needs the audio: cache a dataset prepared with features=True (the default).")
    inputs[family.feature_key] = inputs[family.feature_key].to(teacher.dtype)
    return teacher(**inputs, output_hidden_states=want_hidden)


def _example_tensors(family: Family, out: Any, row: int, valid: torch.Tensor, settings: dict) -> dict[str, torch.Tensor]:
    tensors = {}
    if settings["k"]:
        logprobs = F.log_softmax(out.logits[row].float() / settings["temperature"], dim=-1)[valid[row]]
        values, indices = logprobs.topk(settings["k"], dim=-1)
        tensors.update(logprobs=values.half(), indices=indices.int())
    states, masks = family.hidden_states(out), family.hidden_masks(valid)
    for stack, layers in settings["layers"].items():
        for layer in layers:
            state = states[stack][layer][row]
            # stacks whose every position counts (Whisper's 30 s encoder window) are kept whole
            tensors[f"hidden.{stack}.{layer}"] = (state if masks[stack] is None else state[valid[row]]).half()
    if settings["encoder_outputs"]:
        tensors["encoder"] = family.encoder_output(out)[row].half()
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _check_settings(teacher: PreTrainedModel, family: Family, k: int, temperature: float,
                    hidden_layers: dict | None, encoder_outputs: bool) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if not (1 <= k <= teacher.config.vocab_size or (k == 0 and encoder_outputs)):
        raise ValueError(f"k must be between 1 and the vocabulary size {teacher.config.vocab_size}, got {k} (k=0 "
                         "caches no probabilities: only with encoder_outputs=True).")
    if encoder_outputs and not family.separate_encoder:
        raise ValueError(f"encoder_outputs=True is for teachers with a separate encoder that a frozen student "
                         f"encoder can share (Whisper), not {family.title} models.")
    unknown = sorted(set(hidden_layers or {}) - set(family.stacks))
    if unknown:
        raise ValueError(f"hidden_layers names stacks {unknown}; {family.title} models have {list(family.stacks)}.")


def _start_manifest(out: Path, manifest: dict, state: Any) -> None:
    """Write the manifest (main process), or check that the folder holds this very cache; then synchronise."""
    path = out / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("version") != CACHE_VERSION or old["fingerprint"] != manifest["fingerprint"]:
            raise ValueError(f"{out} holds a cache for another teacher, preprocessing or settings (or of another "
                             "cache version); use a new directory.")
    state.wait_for_everyone()
    if state.is_main_process:
        path.write_text(json.dumps(manifest, indent=2))
    state.wait_for_everyone()


def cache_teacher(
    teacher: PreTrainedModel,
    processor: Any,
    dataset: Any,
    output_dir: str | Path,
    k: int = 8,
    temperature: float = 2.0,
    hidden_layers: dict[str, list[int]] | None = None,
    encoder_outputs: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
    num_workers: int = 0,
    audio_column: str = "audio",
) -> "TeacherCache":
    """Compute and store the teacher's outputs for every row of `dataset` (prepared by `prepare_dataset`).

    `hidden_layers` names the teacher hidden states to keep, e.g. `{"decoder": [4]}` for Whisper or
    `{"encoder": [4, 8, 12]}` for CTC models; `encoder_outputs=True` keeps Whisper's final encoder output (for a
    frozen student encoder shared with the teacher); `k=0` with it keeps nothing else. Under `accelerate launch`
    each process caches its share of the rows; re-running resumes an interrupted cache (with any number of
    processes) after the last complete shard of each process.
    """
    from tqdm.auto import tqdm

    family = family_of(teacher)
    _check_settings(teacher, family, k, temperature, hidden_layers, encoder_outputs)
    state = process_state()
    settings = {"version": CACHE_VERSION, "k": k, "temperature": temperature, "layers": hidden_layers or {},
                "encoder_outputs": encoder_outputs, "dtype": str(teacher.dtype), "family": family.name}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    whole = sorted(stack for stack, mask in family.hidden_masks(torch.ones(1, 1, dtype=torch.bool)).items()
                   if mask is None)
    ids, digests = _rows(dataset, audio_column)
    _start_manifest(out, {"fingerprint": fingerprint(teacher, processor, settings), **settings,
                          "vocab_size": teacher.config.vocab_size, "whole_stacks": whole,
                          "teacher": teacher.config._name_or_path, "examples": len(dataset), "complete": False}, state)
    done = {example: digest for line in read_index(out) for example, digest in zip(line["examples"], line["audio"])}
    changed = [example for example, digest in zip(ids, digests) if example in done and done[example] != digest]
    if changed:
        raise ValueError(f"{out} holds other audio for examples {changed[:5]}: this is another dataset; use a new "
                         "directory.")
    todo = [i for i, example in enumerate(ids) if example not in done]
    mine = share_of(todo, batch_size, state)
    writer = ShardWriter(out, state.process_index, shard_bytes)
    teacher.eval()
    loader = row_loader(dataset, mine, None, collator_for(processor, teacher), batch_size, num_workers)
    for indices, batch in tqdm(loader, desc="caching teacher outputs", disable=not progress or not state.is_main_process):
        result = _teacher_outputs(family, teacher, batch, bool(hidden_layers))
        valid = family.positions(teacher, batch).to(result.logits.device)
        labels = batch["labels"] if "labels" in batch else None
        for row, index in enumerate(indices):
            digest = labels_digest(labels[row][labels[row] != -100].tolist()) if labels is not None else ""
            writer.add(ids[index], digests[index], digest, _example_tensors(family, result, row, valid, settings))
        writer.end_batch()
    writer.flush()
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = json.loads((out / MANIFEST).read_text())
        stored = {example for line in read_index(out) for example in line["examples"]}
        manifest["complete"] = stored >= set(ids)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    state.wait_for_everyone()
    return TeacherCache(out)


def encoder_output_bytes(teacher: PreTrainedModel, examples: int) -> int:
    """Disk cost of caching the encoder output of `examples` rows: positions x width x 2 bytes (fp16) each."""
    family = family_of(teacher)
    return examples * family.encoder_positions(teacher.config) * family.hidden_size(teacher.config) * 2


def cache_size_bytes(path: str | Path) -> int:
    """Bytes on disk of a cache directory."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


# ---- reading ---------------------------------------------------------------------------------------------------


@dataclass
class CachedBatch:
    """Cached teacher outputs for one batch, padded to the batch's positions (None: not in this cache)."""

    logprobs: torch.Tensor | None  # (batch, positions, k) log-probs at T, 0 where padded
    indices: torch.Tensor | None  # (batch, positions, k)
    hidden: dict[str, dict[int, torch.Tensor]]
    encoder: torch.Tensor | None

    def to_batch(self) -> dict[str, torch.Tensor]:
        """As batch entries (`cached_*`), so a DataLoader worker can read the cache for the training step."""
        out = {f"{CACHED_PREFIX}{name}": value for name, value in (
            ("logprobs", self.logprobs), ("indices", self.indices), ("encoder", self.encoder)) if value is not None}
        for stack, layers in self.hidden.items():
            for layer, value in layers.items():
                out[f"{CACHED_PREFIX}hidden.{stack}.{layer}"] = value
        return out

    @classmethod
    def from_batch(cls, batch: dict[str, Any]) -> "CachedBatch | None":
        """Take the `cached_*` entries out of a batch (None when it has none)."""
        keys = [key for key in batch if key.startswith(CACHED_PREFIX)]
        if not keys:
            return None
        values = {key[len(CACHED_PREFIX):]: batch.pop(key) for key in keys}
        hidden: dict[str, dict[int, torch.Tensor]] = {}
        for name, value in values.items():
            if name.startswith("hidden."):
                _, stack, layer = name.split(".")
                hidden.setdefault(stack, {})[int(layer)] = value
        return cls(values.get("logprobs"), values.get("indices"), hidden, values.get("encoder"))


class TeacherCache:
    """Read access to a cache written by `cache_teacher`: the index is read once, shards are opened per batch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise ValueError(f"{self.path} is not a teacher cache (no {MANIFEST}); create one with cache_teacher.")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("version") != CACHE_VERSION:
            raise ValueError(f"{self.path} was made by an older version of hf_asr_distill; rebuild it with "
                             "cache_teacher.")
        if not self.manifest.get("complete"):
            raise ValueError(f"The teacher cache in {self.path} is incomplete; run cache_teacher again to finish it.")
        self._where: dict[int, tuple[Path, int]] = {}  # example -> (shard, its place in the shard)
        self._offsets: dict[Path, dict[str, np.ndarray]] = {}  # shard -> output -> where each example's rows start
        self._audio: dict[int, str] = {}
        self._labels: dict[int, str] = {}
        # teacher outputs at label positions were computed along these labels (Whisper's teacher forcing)
        self.label_bound = FAMILY_KD_PER_LABEL.get(self.manifest["family"], True) and (
            self.manifest["k"] > 0 or any(stack not in self.manifest["whole_stacks"] for stack in self.manifest["layers"]))
        for line in read_index(self.path):
            shard = self.path / line["shard"]
            size = shard.stat().st_size if shard.exists() else -1
            if size != line["bytes"]:
                raise ValueError(f"Cache shard {shard} is missing or damaged ({size} bytes, the index says "
                                 f"{line['bytes']}): delete it and its line in {self.path}/index.p*.jsonl, set "
                                 "\"complete\": false in manifest.json, and run cache_teacher again to redo it.")
            self._offsets[shard] = {what: np.asarray(o, dtype=np.int64) for what, o in line["offsets"].items()}
            for slot, (example, digest, labels) in enumerate(zip(line["examples"], line["audio"], line["labels"])):
                self._where[example], self._audio[example], self._labels[example] = (shard, slot), digest, labels
        if len(self._where) != self.manifest["examples"]:
            raise ValueError(f"{self.path} holds {len(self._where)} examples, its manifest says "
                             f"{self.manifest['examples']}: the cache is damaged; rebuild it.")

    def _shard(self, path: Path) -> Any:
        """An open shard (memory-mapped), kept open up to OPEN_SHARDS per process."""
        if getattr(self, "_pid", None) != os.getpid():  # a forked DataLoader worker opens its own
            self._pid, self._handles = os.getpid(), {}
        handle = self._handles.pop(path, None) or safe_open(str(path), framework="pt")
        self._handles[path] = handle  # most recently used last
        while len(self._handles) > OPEN_SHARDS:
            self._handles.pop(next(iter(self._handles)))
        return handle

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_handles", "_pid")}  # handles do not pickle

    def _names(self) -> list[str]:
        """What every example holds, from the settings (no shard needs listing)."""
        names = ["logprobs", "indices"] if self.manifest["k"] else []
        names += [f"hidden.{stack}.{layer}" for stack, layers in self.manifest["layers"].items() for layer in layers]
        return names + (["encoder"] if self.manifest["encoder_outputs"] else [])

    @property
    def has_probabilities(self) -> bool:
        return self.manifest["k"] > 0

    def check(self, teacher: PreTrainedModel, dataset: Any, processor: Any, audio_column: str = "audio") -> None:
        """Refuse a stale cache: one made by another teacher, preprocessing or settings, or holding other audio
        for the dataset's rows (or none). Labels are checked as batches are read: a cache of encoder outputs
        serves any labels of the same audio (pseudo-labels), one of teacher-forced outputs only its own."""
        settings = {k: self.manifest[k] for k in ("version", "k", "temperature", "layers", "encoder_outputs",
                                                  "dtype", "family")}
        if fingerprint(teacher, processor, settings) != self.manifest["fingerprint"]:
            raise ValueError(f"The teacher cache in {self.path} was made for another teacher, preprocessing or "
                             "settings (fingerprint mismatch); rebuild it with cache_teacher.")
        ids, digests = _rows(dataset, audio_column)
        stale = [i for i, d in zip(ids, digests) if self._audio.get(i) != d]
        if stale:
            raise ValueError(f"The teacher cache in {self.path} has no entry for the audio of examples "
                             f"{stale[:5]}{' ...' if len(stale) > 5 else ''}: it was made from other data.")

    def _read_examples(self, examples: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """All cached tensors of `examples`, opening each shard once and slicing each example's rows."""
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        missing = [example for example in examples if example not in self._where]
        if missing:
            raise ValueError(f"Examples {missing[:5]} are not in the teacher cache in {self.path}: it was made for "
                             "other rows; rebuild it for this training set.")
        for example in examples:
            shard, slot = self._where[example]
            by_shard.setdefault(shard, []).append((example, slot))
        out: dict[int, dict[str, torch.Tensor]] = {example: {} for example in examples}
        names = self._names()
        for shard, members in by_shard.items():
            try:
                f = self._shard(shard)
                for name in names:
                    rows, starts = f.get_slice(name), self._offsets[shard][name]
                    for example, slot in members:
                        out[example][name] = rows[int(starts[slot]):int(starts[slot + 1])]
            except (SafetensorError, OSError) as err:
                raise ValueError(f"Cache shard {shard} cannot be read ({err}): delete it and its index line, and "
                                 "run cache_teacher again to redo it.") from err
        return out

    def batch(self, example_ids: list[int], positions: torch.Tensor, device: torch.device | str = "cpu",
              labels: torch.Tensor | None = None) -> CachedBatch:
        """Cached outputs for `example_ids`, scattered into the `positions` mask (batch, length) of the batch.
        With `labels`, outputs computed along labels are refused for rows whose labels changed since caching."""
        if labels is not None and self.label_bound:
            changed = [e for e, row in zip(example_ids, labels) if self._labels[e] != labels_digest(
                row[row != -100].tolist())]
            if changed:
                raise ValueError(f"Examples {changed[:5]} have other labels than the teacher cache in {self.path} "
                                 "was made with (its outputs follow the labels): rebuild it for these labels.")
        k = self.manifest["k"]
        shape = (*positions.shape, k)
        logprobs = torch.zeros(shape, dtype=torch.float16) if k else None
        indices = torch.zeros(shape, dtype=torch.long) if k else None
        hidden: dict[str, dict[int, torch.Tensor]] = {}
        encoder = []
        whole = set(self.manifest["whole_stacks"])  # stacks stored with every position (Whisper's encoder)
        stored = self._read_examples(example_ids)
        cpu_positions = positions.cpu()
        for row, example in enumerate(example_ids):
            mask, tensors = cpu_positions[row], stored[example]
            count = int(mask.sum())
            # right-padded batches: the valid positions are a prefix, and a slice is much cheaper than a mask
            where = slice(0, count) if bool(mask[:count].all()) else mask
            if k:
                values = tensors["logprobs"]
                if values.shape[0] != count:
                    raise ValueError(f"example {example}: the cache has {values.shape[0]} positions, the batch "
                                     f"{count}; the cache was made from other data.")
                logprobs[row, where] = values
                indices[row, where] = tensors["indices"].long()
            for stack, layers in self.manifest["layers"].items():
                for layer in layers:
                    state = tensors[f"hidden.{stack}.{layer}"]
                    every = stack in whole
                    full = hidden.setdefault(stack, {}).get(int(layer))
                    if full is None:  # allocated once per batch
                        size = state.shape if every else (positions.shape[1], state.shape[-1])
                        full = hidden[stack][int(layer)] = torch.zeros(positions.shape[0], *size, dtype=torch.float16)
                    if every:
                        full[row] = state
                    else:
                        full[row, where] = state
            if self.manifest["encoder_outputs"]:
                encoder.append(tensors["encoder"])
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return CachedBatch(
            logprobs=move(logprobs), indices=move(indices),
            hidden={s: {l: move(t) for l, t in m.items()} for s, m in hidden.items()},
            encoder=move(torch.stack(encoder)) if encoder else None,
        )


@dataclass
class CachedCollator:
    """Wraps a collator so that each training batch carries its cached teacher outputs (`cached_*` entries): the
    cache is read in the DataLoader's workers, and the training step never waits on disk."""

    collate: Callable[[list[dict]], dict]
    cache: TeacherCache
    positions: Callable[[dict], torch.Tensor]

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collate(rows)
        if "example_id" not in batch:
            raise ValueError("A teacher cache needs `example_id` in every batch: prepare the dataset with "
                             "prepare_dataset and batch it with collator_for.")
        cached = self.cache.batch(batch["example_id"].tolist(), self.positions(batch), labels=batch.get("labels"))
        return {**batch, **cached.to_batch()}


def open_cache(cache: "TeacherCache | str | Path", teacher: PreTrainedModel, dataset: Any, processor: Any,
               temperature: float, layer_maps: dict[str, dict[int, int]], shared_encoder: bool) -> TeacherCache:
    """Open a teacher cache for a training run and refuse one that does not fit it (teacher, data, preprocessing,
    temperature, hidden layers, encoder sharing)."""
    cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
    if processor is None:
        raise ValueError("A teacher cache is checked against the preprocessing: pass processing_class=.")
    cache.check(teacher, dataset, processor)
    manifest = cache.manifest
    if cache.has_probabilities and manifest["temperature"] != temperature:
        raise ValueError(f"The cache holds teacher probabilities at temperature {manifest['temperature']}, "
                         f"this run uses {temperature}: rebuild the cache or change temperature.")
    for stack, layer_map in layer_maps.items():
        cached_layers = manifest["layers"].get(stack)
        missing = sorted(set(layer_map.values()) - set(cached_layers or []))
        # a stack is either cached with every layer the map needs, or left to the live teacher (not in the cache)
        if missing and (cached_layers or (cache.has_probabilities and not manifest["encoder_outputs"])):
            raise ValueError(f"The cache has no teacher {stack} hidden states {missing} that the layer map "
                             f"{layer_map} needs: cache them (hidden_layers={{'{stack}': {missing}}}).")
    if manifest["encoder_outputs"] and not shared_encoder:
        logger.info("The cache's encoder outputs feed the teacher's decoder; the student runs its own encoder.")
    return cache
