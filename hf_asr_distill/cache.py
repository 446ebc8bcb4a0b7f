"""Teacher-output cache: the top-k of the teacher's softened distribution, chosen hidden states and (Whisper)
encoder outputs, computed once and read by the trainer instead of running the teacher.

Layout (safetensors only, no pickle): `manifest.json` (fingerprint, settings, completeness) and one
`shard_<first example>.safetensors` per batch, keyed `<example_id>.<what>`. A shard is written to a temporary
name and renamed, so an interrupted run resumes after its last complete shard.

Top-k and the tail: for each label token (Whisper) or audio frame (CTC) the cache keeps the indices of the k most
likely tokens and their log-probabilities at temperature T (fp16). The KD loss then compares teacher and student
on k + 1 buckets, the k tokens and one bucket for all other tokens, whose mass is 1 - sum of the k probabilities.
That is exactly the divergence between the two distributions coarsened to those buckets: it never exceeds the
full-vocabulary divergence and equals it when the teacher puts no mass outside its top k.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from .data import collator_for
from .families import Family, family_of

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MANIFEST = "manifest.json"


def fingerprint(teacher: PreTrainedModel, dataset: Any, processor: Any, settings: dict) -> str:
    """Hash of the teacher (config and every weight), the dataset, the preprocessing and the cache settings."""
    h = hashlib.sha256()
    h.update(json.dumps(teacher.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(str(getattr(dataset, "_fingerprint", len(dataset))).encode())
    extractor = getattr(processor, "feature_extractor", processor)
    h.update(json.dumps(extractor.to_dict(), sort_keys=True, default=str).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def bucket_logprobs(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """Append the tail bucket: log(1 - sum p_k), computed stably; input (..., k) log-probs, output (..., k + 1)."""
    top = topk_logprobs.float()
    tail = torch.log1p(-torch.logsumexp(top, dim=-1).exp().clamp(max=1 - 1e-6))
    return torch.cat([top, tail.unsqueeze(-1)], dim=-1)


def student_buckets(student_logits: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """The student's softened log-probs on the teacher's top-k tokens plus the tail bucket, (..., k + 1)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return bucket_logprobs(log_q.gather(-1, indices.long()))


@torch.no_grad()
def _teacher_outputs(family: Family, teacher: PreTrainedModel, batch: dict, want_hidden: bool) -> Any:
    inputs = {k: v.to(teacher.device) for k, v in family.model_inputs(teacher, batch).items()}
    inputs[family.feature_key] = inputs[family.feature_key].to(teacher.dtype)
    return teacher(**inputs, output_hidden_states=want_hidden)


def _example_tensors(family: Family, out: Any, row: int, valid: torch.Tensor, settings: dict) -> dict[str, torch.Tensor]:
    logprobs = F.log_softmax(out.logits[row].float() / settings["temperature"], dim=-1)[valid[row]]
    values, indices = logprobs.topk(settings["k"], dim=-1)
    tensors = {"logprobs": values.half(), "indices": indices.int()}
    states, masks = family.hidden_states(out), family.hidden_masks(valid)
    for stack, layers in settings["layers"].items():
        for layer in layers:
            state = states[stack][layer][row]
            # stacks whose every position counts (Whisper's 30 s encoder window) are kept whole
            tensors[f"hidden.{stack}.{layer}"] = (state if masks[stack] is None else state[valid[row]]).half()
    if settings["encoder_outputs"]:
        tensors["encoder"] = family.encoder_output(out)[row].half()
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


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
) -> "TeacherCache":
    """Compute and store the teacher's outputs for every row of `dataset` (prepared by `prepare_dataset`).

    `hidden_layers` names the teacher hidden states to keep, e.g. `{"decoder": [4]}` for Whisper or
    `{"encoder": [4, 8, 12]}` for CTC models; `encoder_outputs=True` keeps Whisper's final encoder output (for a
    frozen student encoder shared with the teacher). Re-running resumes an interrupted cache.
    """
    from tqdm.auto import tqdm

    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if k < 1 or k > teacher.config.vocab_size:
        raise ValueError(f"k must be between 1 and the vocabulary size {teacher.config.vocab_size}, got {k}.")
    family = family_of(teacher)
    if encoder_outputs and not family.separate_encoder:
        raise ValueError(f"encoder_outputs=True is for teachers with a separate encoder that a frozen student "
                         f"encoder can share (Whisper), not {family.title} models.")
    unknown = sorted(set(hidden_layers or {}) - set(family.stacks))
    if unknown:
        raise ValueError(f"hidden_layers names stacks {unknown}; {family.title} models have {list(family.stacks)}.")
    settings = {"version": CACHE_VERSION, "k": k, "temperature": temperature, "layers": hidden_layers or {},
                "encoder_outputs": encoder_outputs, "dtype": str(teacher.dtype), "family": family.name}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    whole = sorted(stack for stack, mask in family.hidden_masks(torch.ones(1, 1, dtype=torch.bool)).items()
                   if mask is None)
    manifest = {"fingerprint": fingerprint(teacher, dataset, processor, settings), **settings,
                "vocab_size": teacher.config.vocab_size, "whole_stacks": whole,
                "teacher": teacher.config._name_or_path, "examples": len(dataset), "complete": False}
    old = out / MANIFEST
    if old.exists() and json.loads(old.read_text())["fingerprint"] != manifest["fingerprint"]:
        raise ValueError(f"{out} holds a cache for another teacher, dataset or settings; use a new directory.")
    old.write_text(json.dumps(manifest, indent=2))
    collate = collator_for(processor, teacher)
    teacher.eval()
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="caching teacher outputs", disable=not progress):
        shard = out / f"shard_{start:09d}.safetensors"
        if shard.exists():
            continue  # done before an interruption
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(rows)
        result = _teacher_outputs(family, teacher, batch, bool(hidden_layers))
        valid = family.positions(teacher, batch).to(result.logits.device)
        tensors = {}
        ids = batch["example_id"].tolist() if "example_id" in batch else list(range(start, start + len(rows)))
        for row, example in enumerate(ids):
            for name, value in _example_tensors(family, result, row, valid, settings).items():
                tensors[f"{example}.{name}"] = value
        save_file(tensors, str(shard) + ".tmp")
        os.replace(str(shard) + ".tmp", shard)
    manifest["complete"] = True
    old.write_text(json.dumps(manifest, indent=2))
    return TeacherCache(out)


def encoder_output_bytes(teacher: PreTrainedModel, examples: int) -> int:
    """Disk cost of caching the encoder output of `examples` rows: positions x width x 2 bytes (fp16) each."""
    family = family_of(teacher)
    return examples * family.encoder_positions(teacher.config) * family.hidden_size(teacher.config) * 2


def open_cache(cache: "TeacherCache | str | Path", teacher: PreTrainedModel, dataset: Any, processor: Any,
               temperature: float, layer_maps: dict[str, dict[int, int]], shared_encoder: bool) -> "TeacherCache":
    """Open a teacher cache for a training run and refuse one that does not fit it (teacher, data, preprocessing,
    temperature, hidden layers, encoder sharing)."""
    cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
    if processor is None:
        raise ValueError("A teacher cache is checked against the preprocessing: pass processing_class=.")
    cache.check(teacher, dataset, processor)
    manifest = cache.manifest
    if manifest["temperature"] != temperature:
        raise ValueError(f"The cache holds teacher probabilities at temperature {manifest['temperature']}, "
                         f"this run uses {temperature}: rebuild the cache or change temperature.")
    for stack, layer_map in layer_maps.items():
        missing = sorted(set(layer_map.values()) - set(manifest["layers"].get(stack, [])))
        if missing:
            raise ValueError(f"The cache has no teacher {stack} hidden states {missing} that the layer map "
                             f"{layer_map} needs: cache them (hidden_layers={{'{stack}': {missing}}}).")
    if manifest["encoder_outputs"] and not shared_encoder:
        raise ValueError("The cache holds encoder outputs for a frozen shared encoder, but the student's "
                         "encoder is trainable or differs from the teacher's.")
    return cache


def cache_size_bytes(path: str | Path) -> int:
    """Bytes on disk of a cache directory."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


@dataclass
class CachedBatch:
    """Cached teacher outputs for one batch, padded to the batch's positions."""

    logprobs: torch.Tensor  # (batch, positions, k) log-probs at T, 0 where padded
    indices: torch.Tensor  # (batch, positions, k)
    hidden: dict[str, dict[int, torch.Tensor]]
    encoder: torch.Tensor | None


class TeacherCache:
    """Read access to a cache written by `cache_teacher`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise ValueError(f"{self.path} is not a teacher cache (no {MANIFEST}); create one with cache_teacher.")
        self.manifest = json.loads(manifest_path.read_text())
        if not self.manifest.get("complete"):
            raise ValueError(f"The teacher cache in {self.path} is incomplete; run cache_teacher again to finish it.")
        self._where: dict[int, Path] = {}
        for shard in sorted(self.path.glob("shard_*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    self._where.setdefault(int(key.split(".", 1)[0]), shard)
        if len(self._where) != self.manifest["examples"]:
            raise ValueError(f"{self.path} holds {len(self._where)} examples, its manifest says "
                             f"{self.manifest['examples']}: the cache is damaged; rebuild it.")

    def check(self, teacher: PreTrainedModel, dataset: Any, processor: Any) -> None:
        """Refuse a stale cache: one made for another teacher, dataset, preprocessing or settings."""
        settings = {k: self.manifest[k] for k in ("version", "k", "temperature", "layers", "encoder_outputs",
                                                  "dtype", "family")}
        if fingerprint(teacher, dataset, processor, settings) != self.manifest["fingerprint"]:
            raise ValueError(f"The teacher cache in {self.path} was made for another teacher, dataset, "
                             "preprocessing or settings (fingerprint mismatch); rebuild it with cache_teacher.")

    def _read_examples(self, examples: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """All cached tensors of `examples`, opening each shard once."""
        by_shard: dict[Path, list[int]] = {}
        for example in examples:
            by_shard.setdefault(self._where[example], []).append(example)
        out: dict[int, dict[str, torch.Tensor]] = {}
        for shard, members in by_shard.items():
            with safe_open(str(shard), framework="pt") as f:
                keys = f.keys()
                for example in members:
                    prefix = f"{example}."
                    out[example] = {k[len(prefix):]: f.get_tensor(k) for k in keys if k.startswith(prefix)}
        return out

    def batch(self, example_ids: list[int], positions: torch.Tensor, device: torch.device) -> CachedBatch:
        """Cached outputs for `example_ids`, scattered into the `positions` mask (batch, length) of the batch."""
        k = self.manifest["k"]
        shape = (*positions.shape, k)
        logprobs = torch.zeros(shape, dtype=torch.float16)
        indices = torch.zeros(shape, dtype=torch.long)
        hidden: dict[str, dict[int, torch.Tensor]] = {}
        encoder = []
        whole = set(self.manifest["whole_stacks"])  # stacks stored with every position (Whisper's encoder)
        stored = self._read_examples(example_ids)
        cpu_positions = positions.cpu()
        for row, example in enumerate(example_ids):
            mask, tensors = cpu_positions[row], stored[example]
            values = tensors["logprobs"]
            if values.shape[0] != int(mask.sum()):
                raise ValueError(f"example {example}: the cache has {values.shape[0]} positions, the batch "
                                 f"{int(mask.sum())}; the cache was made from other data.")
            logprobs[row, mask] = values
            indices[row, mask] = tensors["indices"].long()
            for stack, layers in self.manifest["layers"].items():
                for layer in layers:
                    state = tensors[f"hidden.{stack}.{layer}"]
                    every = stack in whole
                    size = state.shape if every else (positions.shape[1], state.shape[-1])
                    full = hidden.setdefault(stack, {}).setdefault(
                        int(layer), torch.zeros(positions.shape[0], *size, dtype=torch.float16))
                    if every:
                        full[row] = state
                    else:
                        full[row, mask] = state
            if self.manifest["encoder_outputs"]:
                encoder.append(tensors["encoder"])
        move = lambda t: t.to(device)  # noqa: E731
        return CachedBatch(
            logprobs=move(logprobs), indices=move(indices),
            hidden={s: {l: move(t) for l, t in m.items()} for s, m in hidden.items()},
            encoder=move(torch.stack(encoder)) if encoder else None,
        )
