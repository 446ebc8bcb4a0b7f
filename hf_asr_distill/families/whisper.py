"""Whisper: an encoder-decoder trained token by token on log-mel windows of 30 s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.whisper.modeling_whisper import shift_tokens_right
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from .base import Family, Limits, config_of, pad_labels, with_example_ids

MAX_SECONDS = 30.0
MAX_LABEL_TOKENS = 448
WINDOW_FRAMES = 3000  # log-mel frames of one 30 s window
TASKS = ("transcribe", "translate")


def is_multilingual(model: PreTrainedModel) -> bool:
    """Whether a Whisper model has language and task tokens (the `.en` checkpoints have neither)."""
    flag = getattr(model.generation_config, "is_multilingual", None)
    return bool(flag) if flag is not None else model.config.vocab_size >= 51865


def language_code(language: str, model: PreTrainedModel) -> str:
    """A language code the model knows ('de' from 'de', 'German' or 'german'), or a ValueError listing them."""
    known = sorted(t[2:-2] for t in getattr(model.generation_config, "lang_to_id", None) or {})
    code = language.lower()
    code = TO_LANGUAGE_CODE.get(code, code)
    if code not in known:
        raise ValueError(f"Unknown language {language!r}: this Whisper model knows {', '.join(known)}.")
    return code


@dataclass
class WhisperCollator:
    """Batches `input_features` (log-mel, padded by the feature extractor) and `labels`.

    The tokenizer puts `<|startoftranscript|>` first; the model prepends the decoder start token itself when it
    shifts the labels right, so a leading start token is dropped here (as in the Transformers examples).
    """

    feature_extractor: Any
    decoder_start_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        if "input_features" in features[0]:  # absent when an encoder-output cache stands in for the encoder
            frames = {np.shape(f["input_features"])[-1] for f in features}
            if len(frames) > 1:  # long-form rows (over 30 s) keep their full length: decoded one at a time
                raise ValueError(f"Whisper rows of different lengths ({sorted(frames)} frames) cannot share a "
                                 "batch; audio over 30 s is decoded one row per batch.")
            batch = dict(self.feature_extractor.pad(
                [{"input_features": f["input_features"]} for f in features], return_tensors="pt"))
        if "labels" in features[0]:
            labels = pad_labels([list(f["labels"]) for f in features])
            if labels.shape[1] > 0 and bool((labels[:, 0] == self.decoder_start_token_id).all()):
                labels = labels[:, 1:]
            batch["labels"] = labels
        return with_example_ids(dict(batch), features)


def student_alignment_heads(teacher_heads: list[list[int]] | None, decoder_map: dict[int, int],
                            heads: int) -> list[list[int]]:
    """The teacher's cross-attention heads that track time (used for word timestamps), renamed to the student
    layers copied from their layers; when no copied layer has one, every head of the student's upper half of
    decoder layers (OpenAI's default when alignment heads are unknown)."""
    copied_from = {t: s for s, t in decoder_map.items()}
    mapped = [[copied_from[layer], head] for layer, head in teacher_heads or []
              if layer in copied_from and head < heads]
    if mapped:
        return mapped
    layers = len(decoder_map)
    return [[layer, head] for layer in range(layers // 2, layers) for head in range(heads)]


def max_new_tokens_for(seconds: float) -> int:
    """A generous bound on Whisper's output from the audio length (speech is ~3-4 tokens/s), capped at 440."""
    return min(440, math.ceil(seconds * 8) + 16)


class WhisperFamily(Family):
    """`WhisperForConditionalGeneration`: token-level KD over label positions; encoder and decoder stacks."""

    name = "whisper"
    title = "Whisper"
    feature_key = "input_features"
    stacks = ("encoder", "decoder")
    depth_fields = {"encoder": "encoder_layers", "decoder": "decoder_layers"}
    layer_map_fields = {"encoder": "encoder_layer_map", "decoder": "decoder_layer_map"}
    width_field = "d_model"
    kd_per_label_token = True
    separate_encoder = True
    ct2_supported = True
    depth_option = "decoder_layers"
    long_form_method = "Whisper's sequential long-form generation (30 s windows, each starting where the last " \
                       "predicted timestamp ended)"

    def handles(self, model_or_config: PreTrainedModel | PretrainedConfig) -> bool:
        return config_of(model_or_config).model_type == "whisper"

    def handles_tokenizer(self, tokenizer: Any) -> bool:
        return "whisper" in type(tokenizer).__name__.lower()

    def parts(self, model: PreTrainedModel) -> dict[str, nn.Module]:
        return {"encoder": model.model.encoder, "decoder": model.model.decoder}

    # ---- data ----------------------------------------------------------------------------------------------------

    def limits(self, model: PreTrainedModel, processor: Any) -> Limits:
        return Limits(max_seconds=MAX_SECONDS, max_label_tokens=MAX_LABEL_TOKENS)

    def language_codes(self, model: PreTrainedModel, language: str | None, language_column: str | None,
                       task: str | None) -> dict[str, str] | None:
        """Multilingual models need a language for every row (labels, teacher forcing and generation all start
        with it); English-only (`.en`) models take none."""
        if task is not None and task not in TASKS:
            raise ValueError(f"task={task!r} is not supported; choose one of {', '.join(TASKS)}.")
        if not is_multilingual(model):
            if language is not None or language_column is not None or task == "translate":
                raise ValueError(
                    "This Whisper model is English-only (an .en checkpoint): it has no language or task tokens, so "
                    f"language={language!r} / language_column={language_column!r} / task={task!r} cannot be trained. "
                    "Leave them unset, or use a multilingual teacher.")
            return None
        if language is None and language_column is None:
            raise ValueError("This Whisper model is multilingual: every row needs a language token. Pass "
                             "language='en' (or another code) for the whole set, or language_column= naming a "
                             "column of per-row language codes.")
        codes = {t[2:-2]: t[2:-2] for t in model.generation_config.lang_to_id}
        codes.update({name: code for name, code in TO_LANGUAGE_CODE.items() if code in codes})
        if language is not None:
            language_code(language, model)  # a clear error now for an unknown language
        return codes

    def prompt_ids(self, tokenizer: Any, language: str | None, task: str | None, timestamps: bool) -> list[int]:
        """`<|startoftranscript|>` [`<|lang|>` `<|task|>`] [`<|notimestamps|>`]: the prefix of labels and
        generation alike (language and task only for multilingual models, which always get both)."""
        tokens = ["<|startoftranscript|>"]
        if language is not None:
            tokens += [f"<|{language}|>", f"<|{task or 'transcribe'}|>"]
        if not timestamps:
            tokens.append("<|notimestamps|>")
        return tokenizer.convert_tokens_to_ids(tokens)

    def label_ids(self, processor: Any, text: str, language: str | None = None, task: str | None = None,
                  timestamps: bool = False) -> list[int]:
        """Prompt, the text's tokens (timestamp tokens such as `<|1.20|>` included when `timestamps`), end token.

        The text starts with a space, as Whisper writes it (OpenAI's tokenizer encodes every segment as
        " " + text): "Meanwhile" and " Meanwhile" are different tokens, and forced along the first, tiny.en's
        loss per label token is 1.32 against 0.74 along the second (24 fortune sentences, four voices).
        """
        tokenizer = processor.tokenizer
        text = text.strip()
        body = tokenizer(text if text.startswith("<|") else " " + text, add_special_tokens=False).input_ids
        return [*self.prompt_ids(tokenizer, language, task, timestamps), *body, tokenizer.eos_token_id]

    def features(self, processor: Any, audio: list, sampling_rate: int, long_form: bool = False) -> dict[str, list]:
        """Log-mel windows of 30 s; with `long_form`, audio over 30 s keeps all its frames (decoded sequentially)."""
        extractor = processor.feature_extractor
        out = []
        for wave in audio:
            if long_form and len(wave) > MAX_SECONDS * sampling_rate:
                out.append(extractor(wave, sampling_rate=sampling_rate, truncation=False, padding="longest",
                                     return_attention_mask=False)["input_features"][0])
            else:
                out.append(extractor(wave, sampling_rate=sampling_rate)["input_features"][0])
        return {"input_features": out}

    def collator(self, feature_extractor: Any, model: PreTrainedModel) -> WhisperCollator:
        return WhisperCollator(feature_extractor, model.config.decoder_start_token_id)

    def check_processor(self, model: PreTrainedModel, processor: Any) -> None:
        extractor = getattr(processor, "feature_extractor", processor)
        frames = getattr(extractor, "nb_max_frames", None)
        accepted = 2 * model.config.max_source_positions
        if frames is not None and frames > accepted:
            raise ValueError(f"The feature extractor makes {frames} log-mel frames, but the student accepts "
                             f"{accepted} (max_source_positions={model.config.max_source_positions}). "
                             "Use the teacher's processor with a student of the same max_source_positions.")

    # ---- training ------------------------------------------------------------------------------------------------

    def model_inputs(self, model: PreTrainedModel, batch: dict[str, Any]) -> dict[str, Any]:
        inputs = {"input_features": batch["input_features"]} if "input_features" in batch else {}
        if "decoder_input_ids" in batch:
            inputs["decoder_input_ids"] = batch["decoder_input_ids"]
        elif "labels" in batch:  # teacher forcing on the labels, exactly as the model does when given labels
            config = model.config
            inputs["decoder_input_ids"] = shift_tokens_right(batch["labels"], config.pad_token_id,
                                                             config.decoder_start_token_id)
        return inputs

    def positions(self, model: PreTrainedModel, batch: dict[str, Any]) -> torch.Tensor:
        return batch["labels"].ne(-100)

    def hard_loss(self, model: PreTrainedModel, outputs: Any, batch: dict[str, Any],
                  label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               reduction="sum", label_smoothing=label_smoothing)

    def hidden_states(self, outputs: Any) -> dict[str, tuple[torch.Tensor, ...]]:
        return {"encoder": outputs.encoder_hidden_states, "decoder": outputs.decoder_hidden_states}

    def hidden_masks(self, positions: torch.Tensor) -> dict[str, torch.Tensor | None]:
        # The encoder always sees a full 30 s window; decoder positions count where there is a label.
        return {"encoder": None, "decoder": positions}

    def encoder_positions(self, config: PretrainedConfig) -> int:
        return config.max_source_positions

    def encoder_output(self, outputs: Any) -> torch.Tensor | None:
        return outputs.encoder_last_hidden_state

    def with_encoder_output(self, inputs: dict[str, Any], encoder_output: torch.Tensor) -> dict[str, Any]:
        out = {k: v for k, v in inputs.items() if k != "input_features"}
        out["encoder_outputs"] = (encoder_output,)
        return out

    def can_share_encoder(self, student: PreTrainedModel, teacher: PreTrainedModel) -> tuple[bool, str]:
        s_enc, t_enc = student.model.encoder, teacher.model.encoder
        if any(p.requires_grad for p in s_enc.parameters()):
            return False, "the student's encoder is trainable"
        config = student.config
        if config.apply_spec_augment and (config.mask_time_prob > 0 or config.mask_feature_prob > 0):
            return False, "the student applies SpecAugment, which the teacher must not see"
        noisy = [f"{name}={getattr(config, name)}" for name in ("dropout", "attention_dropout", "activation_dropout")
                 if getattr(config, name, 0) > 0]
        if noisy:  # a frozen encoder still drops out in training mode: its output is not the teacher's
            return False, f"the student's encoder applies dropout in training ({', '.join(noisy)})"
        s_state, t_state = s_enc.state_dict(), t_enc.state_dict()
        same = s_state.keys() == t_state.keys() and all(
            s_state[k].shape == t_state[k].shape and torch.equal(s_state[k].to(t_state[k]), t_state[k])
            for k in s_state)
        if not same:
            return False, "the student's encoder differs from the teacher's"
        return True, "the student's frozen encoder equals the teacher's"

    # ---- transcription and evaluation ----------------------------------------------------------------------------

    def set_generation_defaults(self, model: PreTrainedModel, language: str | None, task: str | None) -> None:
        if language is not None:
            self.language_codes(model, language, None, task)  # English-only models and unknown codes are refused
            model.generation_config.language = language_code(language, model)
        if task is not None:
            if task not in TASKS:
                raise ValueError(f"task={task!r} is not supported; choose one of {', '.join(TASKS)}.")
            if task == "translate" and not is_multilingual(model):
                raise ValueError("task='translate' needs a multilingual Whisper model; this one is English-only.")
            if is_multilingual(model):
                model.generation_config.task = task

    def generation_options(self, model: PreTrainedModel, batch: dict[str, Any]) -> dict[str, Any]:
        """`language` (per row) and `task` for `generate`, from the batch's language codes or its labels' prompt."""
        if not is_multilingual(model):
            return {}
        languages = batch.get("language")
        labels = batch.get("labels")
        config = model.generation_config
        if labels is not None and labels.shape[1] >= 2:
            by_id = {i: t[2:-2] for t, i in config.lang_to_id.items()}
            tasks = {i: t for t, i in config.task_to_id.items()}
            first = labels[:, 0].tolist()
            if languages is None and all(i in by_id for i in first):
                languages = [by_id[i] for i in first]
            task_ids = set(labels[:, 1].tolist())
            if len(task_ids) == 1 and task_ids <= set(tasks):
                return {"language": languages, "task": tasks[task_ids.pop()]}
        return {"language": languages} if languages is not None else {}

    def transcribe(self, model: PreTrainedModel, processor: Any, batch: dict[str, Any],
                   generate_kwargs: dict | None = None, timestamps: bool = False) -> list[str]:
        """Greedy `generate` in each row's language; with `timestamps`, the text keeps Whisper's timestamp tokens
        (`<|0.00|> text<|2.40|>`), ready to train a student's timestamp prediction."""
        features = batch["input_features"].to(model.device, model.dtype)
        kwargs = {**self.generation_options(model, batch), **(generate_kwargs or {})}
        if timestamps:
            kwargs["return_timestamps"] = True
        if features.shape[-1] > WINDOW_FRAMES:
            # over 30 s: Whisper's sequential long-form decoding, window after window, guided by timestamps
            kwargs = {"return_timestamps": True, "max_new_tokens": max_new_tokens_for(MAX_SECONDS),
                      "attention_mask": torch.ones(features.shape[0], features.shape[-1], dtype=torch.long,
                                                   device=model.device), **kwargs}
        else:
            seconds = float(batch.get("max_seconds", MAX_SECONDS))
            kwargs = {"max_new_tokens": max_new_tokens_for(seconds), **kwargs}
        ids = model.generate(features, **kwargs)
        return processor.tokenizer.batch_decode(ids, skip_special_tokens=True, decode_with_timestamps=timestamps)

    def languages_of_labels(self, tokenizer: Any, label_ids: Any) -> list[str] | None:
        """Each row's language code from the first token of its labels (None for English-only models)."""
        to_tokens = getattr(tokenizer, "convert_ids_to_tokens", None)
        if to_tokens is None or len(label_ids) == 0:
            return None
        first = to_tokens([int(row[0]) for row in np.asarray(label_ids)])
        codes = [t[2:-2] if t and t.startswith("<|") and t.endswith("|>") else None for t in first]
        known = set(TO_LANGUAGE_CODE.values())
        return codes if all(c in known for c in codes) else None

    def decode_predictions(self, tokenizer: Any, predictions: Any, label_ids: Any) -> tuple[list[str], list[str]]:
        pad = tokenizer.pad_token_id
        texts = tokenizer.batch_decode(np.where(predictions == -100, pad, predictions), skip_special_tokens=True)
        refs = tokenizer.batch_decode(np.where(label_ids == -100, pad, label_ids), skip_special_tokens=True)
        return texts, refs

    # ---- deployed forms ------------------------------------------------------------------------------------------

    def onnx_graphs(self, model: PreTrainedModel, batch: dict[str, Any], processor: Any) -> dict[str, tuple]:
        prompt = runtime_prompts(model.generation_config, processor.tokenizer, batch)[0]
        return onnx_graphs(model, batch, prompt)

    def onnx_transcribe(self, sessions: dict[str, Any], config: PretrainedConfig, generation_config: Any,
                        processor: Any, batch: dict[str, Any]) -> list[str]:
        self._short_form(batch)
        return onnx_transcribe(sessions, generation_config, processor, batch,
                               max_new_tokens_for(float(batch.get("max_seconds", MAX_SECONDS))))

    def ct2_transcribe(self, model: Any, config: PretrainedConfig, generation_config: Any, processor: Any,
                       batch: dict[str, Any]) -> list[str]:
        self._short_form(batch)
        return ct2_transcribe(model, generation_config, processor, batch,
                              max_new_tokens_for(float(batch.get("max_seconds", MAX_SECONDS))))

    def assistant(self, student: PreTrainedModel, teacher: PreTrainedModel) -> PreTrainedModel:
        """The student as the teacher's assistant in speculative decoding (`generate(assistant_model=...)`): its
        decoder alone when its encoder is the teacher's (the teacher's encoder output then serves both, as with
        distil-whisper), the whole student otherwise. Pairs that cannot work are refused with the reason."""
        if student.config.vocab_size != teacher.config.vocab_size:
            raise ValueError(f"The assistant must share the teacher's vocabulary: student vocab "
                             f"{student.config.vocab_size} != teacher vocab {teacher.config.vocab_size}.")
        if student.config.num_mel_bins != teacher.config.num_mel_bins:
            raise ValueError(f"The assistant must read the teacher's features: {student.config.num_mel_bins} mel "
                             f"bins != {teacher.config.num_mel_bins}.")
        s_enc, t_enc = student.model.encoder.state_dict(), teacher.model.encoder.state_dict()
        shared = s_enc.keys() == t_enc.keys() and all(
            s_enc[k].shape == t_enc[k].shape and torch.equal(s_enc[k].to(t_enc[k]), t_enc[k]) for k in s_enc)
        if not shared:
            return student.eval()
        from transformers import WhisperForCausalLM

        import copy

        decoder_only = WhisperForCausalLM(copy.deepcopy(student.config)).to(student.device, student.dtype)
        decoder_only.model.decoder.load_state_dict(student.model.decoder.state_dict())
        decoder_only.proj_out.load_state_dict(student.proj_out.state_dict())
        decoder_only.generation_config = copy.deepcopy(student.generation_config)
        return decoder_only.eval()

    @staticmethod
    def _short_form(batch: dict[str, Any]) -> None:
        if batch["input_features"].shape[-1] > WINDOW_FRAMES:
            raise ValueError("Audio over 30 s is decoded long-form by the PyTorch model only; evaluate deployed forms "
                             "on audio of at most 30 s (prepare_dataset without long_form).")

    # ---- students ------------------------------------------------------------------------------------------------

    def freeze_encoder(self, student: PreTrainedModel) -> None:
        student.model.encoder.requires_grad_(False)

    def finish_student(self, student: PreTrainedModel, teacher: PreTrainedModel,
                       layer_map: dict[str, dict[int, int]]) -> None:
        """The teacher's generation config (languages, tasks, timestamps, suppressed tokens), with alignment heads
        that name the student's own decoder layers, so word timestamps work on the student."""
        import copy

        student.generation_config = copy.deepcopy(teacher.generation_config)
        student.generation_config.alignment_heads = student_alignment_heads(
            getattr(teacher.generation_config, "alignment_heads", None), layer_map["decoder"],
            student.config.decoder_attention_heads)


# ---- deployed forms: ONNX graphs, and greedy decoding in ONNX Runtime and CTranslate2 --------------------------


class _OnnxEncoder(nn.Module):
    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features).last_hidden_state


class _OnnxDecoderInit(nn.Module):
    """The prompt's step: logits, and every layer's self- and cross-attention keys and values for the next steps."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.decoder, self.proj_out, self.layers = model.model.decoder, model.proj_out, model.config.decoder_layers

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, past_key_values=cache,
                           use_cache=True)
        kv = out.past_key_values
        states = []
        for i in range(self.layers):
            states += [kv.self_attention_cache.layers[i].keys, kv.self_attention_cache.layers[i].values,
                       kv.cross_attention_cache.layers[i].keys, kv.cross_attention_cache.layers[i].values]
        return (self.proj_out(out.last_hidden_state), *states)


class _OnnxDecoderStep(nn.Module):
    """One more token: logits and the grown self-attention keys and values (the cross-attention ones are fixed)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.decoder, self.proj_out, self.layers = model.model.decoder, model.proj_out, model.config.decoder_layers

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self_cache, cross_cache = DynamicCache(), DynamicCache()
        for i in range(self.layers):
            self_cache.update(past[4 * i], past[4 * i + 1], i)
            cross_cache.update(past[4 * i + 2], past[4 * i + 3], i)
        start = past[0].shape[2]
        positions = torch.arange(start, start + input_ids.shape[1]).unsqueeze(0)
        # the cross cache is filled: the encoder states passed here only make the layers run cross-attention
        out = self.decoder(input_ids=input_ids, encoder_hidden_states=past[2], position_ids=positions, use_cache=True,
                           past_key_values=EncoderDecoderCache(self_cache, cross_cache))
        kv = out.past_key_values
        states = []
        for i in range(self.layers):
            states += [kv.self_attention_cache.layers[i].keys, kv.self_attention_cache.layers[i].values]
        return (self.proj_out(out.last_hidden_state), *states)


def _past_names(layers: int) -> list[str]:
    return [f"past_{kind}_{i}" for i in range(layers) for kind in ("self_k", "self_v", "cross_k", "cross_v")]


def onnx_graphs(model: PreTrainedModel, batch: dict[str, Any], prompt: list[int]) -> dict[str, tuple]:
    """Whisper as three ONNX graphs (encoder, decoder's first step, decoder's next steps with a key/value cache):
    name -> (module, example inputs, input names, output names, dynamic axes)."""
    layers = model.config.decoder_layers
    features = batch["input_features"][:1].to(model.dtype)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        encoded = _OnnxEncoder(model)(features)
        first = _OnnxDecoderInit(model)(ids, encoded)
    past, present = _past_names(layers), [f"present_{k}_{i}" for i in range(layers) for k in ("self_k", "self_v")]
    cross = {name: {0: "batch"} for name in past if "cross" in name}
    return {
        "encoder": (_OnnxEncoder(model), (features,), ["input_features"], ["encoder_hidden_states"],
                    {"input_features": {0: "batch"}, "encoder_hidden_states": {0: "batch"}}),
        "decoder_init": (_OnnxDecoderInit(model), (ids, encoded), ["input_ids", "encoder_hidden_states"],
                         ["logits", *past], {"input_ids": {0: "batch", 1: "prompt"}, "logits": {0: "batch", 1: "prompt"},
                                             "encoder_hidden_states": {0: "batch"}, **cross,
                                             **{n: {0: "batch", 2: "prompt"} for n in past if "self" in n}}),
        "decoder_step": (_OnnxDecoderStep(model), (ids[:, -1:], *first[1:]), ["input_ids", *past],
                         ["logits", *present], {"input_ids": {0: "batch"}, "logits": {0: "batch"}, **cross,
                                                **{n: {0: "batch", 2: "past"} for n in past if "self" in n},
                                                **{n: {0: "batch", 2: "grown"} for n in present}}),
    }


def runtime_prompts(generation_config: Any, tokenizer: Any, batch: dict[str, Any]) -> list[list[int]]:
    """Each row's prompt, as `generate` makes it: start, language and task (multilingual), no-timestamps."""
    multilingual = bool(getattr(generation_config, "is_multilingual", False))
    languages = batch.get("language") or [getattr(generation_config, "language", None) or "en"] * len(
        batch["input_features"])
    task = getattr(generation_config, "task", None) or "transcribe"
    family = WhisperFamily()
    return [family.prompt_ids(tokenizer, lang if multilingual else None, task, timestamps=False) for lang in languages]


def _suppress(logits: np.ndarray, generation_config: Any, first: bool) -> np.ndarray:
    logits = logits.copy()
    if getattr(generation_config, "suppress_tokens", None):
        logits[:, generation_config.suppress_tokens] = -np.inf
    if first and getattr(generation_config, "begin_suppress_tokens", None):
        logits[:, generation_config.begin_suppress_tokens] = -np.inf
    return logits


def onnx_transcribe(sessions: dict[str, Any], generation_config: Any, processor: Any, batch: dict[str, Any],
                    max_new_tokens: int) -> list[str]:
    """Greedy decoding with the three ONNX graphs and the key/value cache, as `generate` decodes (suppressed tokens
    included)."""
    tokenizer, eos = processor.tokenizer, generation_config.eos_token_id
    features = batch["input_features"].float().numpy()
    prompts = np.array(runtime_prompts(generation_config, tokenizer, batch), dtype=np.int64)
    encoded = sessions["encoder"].run(None, {"input_features": features})[0]
    out = sessions["decoder_init"].run(None, {"input_ids": prompts, "encoder_hidden_states": encoded})
    layers = (len(out) - 1) // 4
    past = dict(zip(_past_names(layers), out[1:]))
    logits, tokens = out[0][:, -1], [[] for _ in prompts]
    finished = np.zeros(len(prompts), dtype=bool)
    for step in range(max_new_tokens):
        chosen = _suppress(logits, generation_config, step == 0).argmax(-1)
        for row, token in enumerate(chosen):
            if not finished[row]:
                finished[row] = token == eos
                tokens[row] += [] if finished[row] else [int(token)]
        if finished.all():
            break
        feed = np.where(finished, eos, chosen).astype(np.int64)[:, None]
        out = sessions["decoder_step"].run(None, {"input_ids": feed, **past})
        for i in range(layers):
            past[f"past_self_k_{i}"], past[f"past_self_v_{i}"] = out[1 + 2 * i], out[2 + 2 * i]
        logits = out[0][:, -1]
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


def ct2_transcribe(model: Any, generation_config: Any, processor: Any, batch: dict[str, Any],
                   max_new_tokens: int) -> list[str]:
    """Greedy decoding in CTranslate2 (what faster-whisper runs), from the same features and prompts."""
    import ctranslate2

    tokenizer = processor.tokenizer
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(batch["input_features"].float().numpy()))
    prompts = [tokenizer.convert_ids_to_tokens(p) for p in runtime_prompts(generation_config, tokenizer, batch)]
    # suppress_tokens=[-1]: the model's own (converted from its generation config); suppress_blank (a space or the
    # end as first token) is what begin_suppress_tokens says for Whisper checkpoints
    blank = bool(getattr(generation_config, "begin_suppress_tokens", None))
    # CTranslate2's Whisper decodes at most max_length / 2 tokens (OpenAI's sample_len rule), capped at 448
    results = model.generate(features, prompts, beam_size=1, max_length=min(448, 2 * max_new_tokens),
                             suppress_blank=blank, suppress_tokens=[-1])
    return tokenizer.batch_decode([r.sequences_ids[0] for r in results], skip_special_tokens=True)
