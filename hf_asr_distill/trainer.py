"""`DistillationTrainer`: a `Seq2SeqTrainer` whose loss mixes hard labels, teacher outputs and hidden states."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer, TrainerCallback, get_scheduler
from transformers.models.whisper.modeling_whisper import shift_tokens_right
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import DistillationConfig
from .model_card import RECIPE_FIELDS, build_model_card, push_student, results_from_report
from .cache import CachedBatch, TeacherCache, bucket_logprobs, student_buckets
from .losses import HIDDEN_LOSS_FNS, KD_LOSS_FNS, align_time, masked_mean, masked_sum
from .projection import build_projections, projection_key
from .student import frame_mask, hidden_size, layer_counts, load_model, model_family

logger = logging.getLogger(__name__)

TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROJECTIONS_FILE = "projections.safetensors"
PROJECTION_OPTIMIZER_FILE = "projections_optimizer.pt"
RECORD_FILE = "distillation.json"


def check_pair(teacher: PreTrainedModel, student: PreTrainedModel, args: DistillationConfig) -> str:
    """Refuse teacher/student pairs that cannot be distilled; return the family ('whisper' or 'ctc')."""
    t_family, s_family = model_family(teacher), model_family(student)
    if t_family != s_family:
        raise ValueError(
            f"Teacher is a {t_family} model but the student is a {s_family} model: output-layer and hidden-state "
            "KD are unavailable across families and vocabularies. Train on the teacher's pseudo-labels instead "
            "(hf-asr-distill pseudo-label), with teacher_model=None."
        )
    t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
    if args.alpha_kd > 0 and t_vocab != s_vocab:
        raise ValueError(
            f"teacher vocab {t_vocab} != student vocab {s_vocab}: output-layer KD compares distributions over the "
            "same vocabulary. Use the teacher's tokenizer for the student, or set alpha_kd=0."
        )
    return t_family


def check_backend(args: DistillationConfig, deepspeed: bool, fsdp: bool) -> None:
    """Refuse the combinations not verified yet: hidden-state KD under FSDP (accelerate runs FSDP on GPUs only, and
    this path has not been run there), and under DeepSpeed with fp16 (DeepSpeed's own loss scale would reach the
    projections' gradients unseen)."""
    where = "FSDP" if fsdp else "DeepSpeed with fp16" if deepspeed and args.fp16 else None
    if where and args.alpha_hidden > 0:
        raise NotImplementedError(
            f"Hidden-state KD (alpha_hidden > 0) is not available under {where} yet. Use DDP or DeepSpeed (bf16 or "
            f"fp32) for it, or alpha_hidden=0 (output-layer KD, pseudo-labels and teacher caches work under {where}).")


class _ProjectionSteps(TrainerCallback):
    """Steps the projections' optimizer with Trainer's: every backend calls these two events around its step."""

    def __init__(self, trainer: "DistillationTrainer") -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._prepare_projection_grads()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._step_projections()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.projection_scheduler = None  # a later train() gets a schedule of its own length


def _default_map(n_student: int, n_teacher: int, copied: dict[str, int] | None) -> dict[int, int]:
    """Hidden-state indices: each student layer to the teacher layer it was copied from, else spaced, last to last."""
    if copied is not None and len(copied) == n_student:
        return {int(s) + 1: int(t) + 1 for s, t in copied.items()}
    return {s: round(s * n_teacher / n_student) for s in range(1, n_student + 1)}


class DistillationTrainer(Seq2SeqTrainer):
    """Trainer that distils `teacher_model` into `model` (the student).

    The loss is `alpha_ce * hard + alpha_kd * output_kd + alpha_hidden * hidden`, each term logged as `loss_ce`,
    `loss_kd` and `loss_hidden`. Whisper uses token-level KD over label positions; CTC models frame-level KD over
    non-padded frames. The teacher is frozen, in eval mode, run without gradients, never wrapped for gradient
    synchronisation and never saved with the student.
    """

    # compute_loss scales its own terms for gradient accumulation (token sums over `num_items_in_batch`).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | str | None = None,
        args: DistillationConfig | None = None,
        teacher_cache: TeacherCache | str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, DistillationConfig):
            raise TypeError("DistillationTrainer needs args=DistillationConfig(...) (it carries the KD settings).")
        if model is None:
            raise ValueError("DistillationTrainer needs model= (the student).")
        if teacher_model is None and (args.alpha_kd > 0 or args.alpha_hidden > 0 or teacher_cache is not None):
            raise ValueError("teacher_model= is needed for output-layer or hidden-state KD (alpha_kd/alpha_hidden "
                             "> 0) and for a teacher cache. Training on pseudo-labels alone needs no teacher.")
        teacher_dtype = TEACHER_DTYPES[args.teacher_dtype]
        if isinstance(teacher_model, str):
            teacher_model = load_model(teacher_model, dtype=teacher_dtype)
        self.family = check_pair(teacher_model, model, args) if teacher_model is not None else model_family(model)
        super().__init__(model=model, args=args, **kwargs)
        check_backend(args, deepspeed=self.is_deepspeed_enabled, fsdp=self.is_fsdp_enabled)
        # Whisper: let Trainer count label tokens over the accumulated batch (and across processes).
        self.model_accepts_loss_kwargs = self.family == "whisper"
        self._check_input_length()
        # `teacher_runner` is what runs (a DeepSpeed engine under ZeRO-3), `teacher` the model inside it
        if teacher_model is None:  # sequence-level KD only: the targets are the teacher's transcripts
            self.teacher_runner = None
        elif teacher_cache is None:
            self.teacher_runner = self._prepare_teacher(teacher_model.to(teacher_dtype))
        else:  # only checked against the cache (made in its own dtype), never run: it stays on the CPU, uncast
            self.teacher_runner = teacher_model.eval().requires_grad_(False)
        self.teacher = self.accelerator.unwrap_model(self.teacher_runner) if self.teacher_runner is not None else None
        self.share_encoder = self._can_share_encoder()
        self.layer_maps = self._resolve_layer_maps()
        self.cache = self._open_cache(teacher_cache)
        dims = {stack: (hidden_size(self.model.config), hidden_size(self.teacher.config)) for stack in self.layer_maps}
        self.projections = build_projections(self.layer_maps, dims, args.projection).to(args.device)
        self.projection_optimizer: torch.optim.Optimizer | None = None
        self.projection_scheduler: Any = None
        self.add_callback(_ProjectionSteps(self))
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        logger.info("Distillation: family=%s shared encoder=%s layer maps=%s", self.family, self.share_encoder,
                    self.layer_maps)
        if args.push_to_hub:
            self.model_card()  # a card that cannot render fails now, not after training

    def _check_input_length(self) -> None:
        """Whisper: the feature extractor's window must fit the encoder, or every step would fail."""
        extractor = getattr(self.processing_class, "feature_extractor", None)
        frames = getattr(extractor, "nb_max_frames", None)
        if self.family == "whisper" and frames is not None:
            accepted = 2 * self.model.config.max_source_positions
            if frames > accepted:
                raise ValueError(f"The feature extractor makes {frames} log-mel frames, but the student accepts "
                                 f"{accepted} (max_source_positions={self.model.config.max_source_positions}). "
                                 "Use the teacher's processor with a student of the same max_source_positions.")

    # ---- teacher ---------------------------------------------------------------------------------------------

    @property
    def _needs_teacher(self) -> bool:
        return self.args.alpha_kd > 0 or self.args.alpha_hidden > 0

    def _teacher_terms(self, model: nn.Module) -> bool:
        """Whether this step compares with the teacher. A cache covers the training set only, so evaluation
        batches with a cache get the hard-label loss alone."""
        return self._needs_teacher and (self.cache is None or model.training)

    def _prepare_teacher(self, teacher: PreTrainedModel) -> nn.Module:
        teacher.eval()
        teacher.requires_grad_(False)
        if self.is_deepspeed_enabled and self._zero_stage() == 3:
            return self._deepspeed_teacher(teacher)
        # evaluation_mode: no DDP/FSDP wrapper, so no gradient sync. Placement is explicit because prepare_model
        # skips it under FSDP: the teacher is a full frozen replica on each device (under DDP, FSDP and ZeRO-1/2,
        # which shard optimizer state and gradients, and a frozen teacher has neither).
        return self.accelerator.prepare_model(teacher, device_placement=True, evaluation_mode=True)

    def _zero_stage(self) -> int:
        return int(self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
                   .get("stage", 0))

    def _deepspeed_teacher(self, teacher: PreTrainedModel) -> nn.Module:
        """ZeRO-3: the teacher's weights are partitioned across processes like the student's, in an engine of its
        own built from the run's DeepSpeed config without optimizer or scheduler; forward passes gather them."""
        import deepspeed

        config = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        zero, width = config["zero_optimization"], hidden_size(teacher.config)
        # the sizes Trainer fills from the student's width only when training starts; here from the teacher's
        for key, value in (("reduce_bucket_size", width * width), ("stage3_prefetch_bucket_size", int(0.9 * width**2)),
                           ("stage3_param_persistence_threshold", 10 * width)):
            if zero.get(key) == "auto":
                zero[key] = value
        unresolved = [k for k, v in {**config, **zero}.items() if v == "auto"]
        if unresolved:
            raise ValueError(f"DeepSpeed config values {unresolved} are still 'auto' for the teacher's engine: "
                             "set them explicitly.")
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        engine.eval()  # DeepSpeedEngine.eval() returns None
        return engine

    def _open_cache(self, cache: TeacherCache | str | None) -> TeacherCache | None:
        """Open the teacher cache and refuse one that does not fit this run (teacher, data, settings)."""
        if cache is None:
            return None
        cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
        if self.processing_class is None:
            raise ValueError("A teacher cache is checked against the preprocessing: pass processing_class=.")
        cache.check(self.teacher, self.train_dataset, self.processing_class)
        manifest = cache.manifest
        if manifest["temperature"] != self.args.temperature:
            raise ValueError(f"The cache holds teacher probabilities at temperature {manifest['temperature']}, "
                             f"this run uses {self.args.temperature}: rebuild the cache or change temperature.")
        for stack, layer_map in self.layer_maps.items():
            missing = sorted(set(layer_map.values()) - set(manifest["layers"].get(stack, [])))
            if missing:
                raise ValueError(f"The cache has no teacher {stack} hidden states {missing} that the layer map "
                                 f"{layer_map} needs: cache them (hidden_layers={{'{stack}': {missing}}}).")
        if manifest["encoder_outputs"] and not self.share_encoder:
            raise ValueError("The cache holds encoder outputs for a frozen shared encoder, but the student's "
                             "encoder is trainable or differs from the teacher's.")
        return cache

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        """Evaluation. Generation never sees the cache key `example_id`; CTC logits of padded frames become blanks
        so that `compute_metrics` decodes only real audio."""
        if self.args.predict_with_generate and not self.args.prediction_loss_only:
            inputs = {k: v for k, v in inputs.items() if k != "example_id"}
        loss, logits, labels = super().prediction_step(model, inputs, *args, **kwargs)
        if self.family == "ctc" and logits is not None:
            valid = frame_mask(self.accelerator.unwrap_model(model), inputs.get("attention_mask"), logits.shape[1])
            if valid is not None:  # padded frames decode as blanks
                blank = torch.full_like(logits, torch.finfo(logits.dtype).min)
                blank[..., self.accelerator.unwrap_model(model).config.pad_token_id] = 0
                logits = torch.where(valid[..., None], logits, blank)
        return loss, logits, labels

    def _can_share_encoder(self) -> bool:
        """Whisper: the student's encoder is frozen and equal to the teacher's, so the teacher can reuse its output."""
        if self.family != "whisper" or not self.args.share_frozen_encoder or self.teacher is None:
            return False
        if self.is_deepspeed_enabled and self._zero_stage() == 3:
            return False  # partitioned weights cannot be compared here
        s_enc = self.accelerator.unwrap_model(self.model).model.encoder
        t_enc = self.teacher.model.encoder
        if any(p.requires_grad for p in s_enc.parameters()):
            return False
        s_state, t_state = s_enc.state_dict(), t_enc.state_dict()
        if s_state.keys() != t_state.keys():
            return False
        return all(
            s_state[k].shape == t_state[k].shape and torch.equal(s_state[k].to(t_state[k]), t_state[k]) for k in s_state
        )

    # ---- layer maps and projections --------------------------------------------------------------------------

    def _explicit_maps(self) -> dict[str, dict[int, int] | None]:
        args = self.args
        if self.family == "whisper":
            if args.hidden_layer_map is not None:
                raise ValueError("Whisper uses encoder_layer_map and decoder_layer_map, not hidden_layer_map.")
            return {"encoder": args.encoder_layer_map, "decoder": args.decoder_layer_map}
        if args.encoder_layer_map is not None or args.decoder_layer_map is not None:
            raise ValueError("CTC models use hidden_layer_map, not encoder_layer_map/decoder_layer_map.")
        return {"encoder": args.hidden_layer_map}

    def _resolve_layer_maps(self) -> dict[str, dict[int, int]]:
        """Hidden-state layer maps per stack, in `output_hidden_states` indices; empty when alpha_hidden is 0."""
        if self.args.alpha_hidden == 0:
            return {}
        for name in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop"):
            if getattr(self.model.config, name, 0) > 0:
                raise ValueError(
                    f"The student has {name}={getattr(self.model.config, name)}: layers dropped at random cannot be "
                    f"matched to teacher layers. Set student.config.{name} = 0.0 for hidden-state distillation."
                )
        s_counts, t_counts = layer_counts(self.model.config), layer_counts(self.teacher.config)
        copied = getattr(self.model.config, "distillation_layer_map", None) or {}
        maps = {}
        for stack, explicit in self._explicit_maps().items():
            if stack == "encoder" and self.share_encoder:
                if explicit:
                    raise ValueError("encoder_layer_map is pointless: the frozen student encoder equals the teacher's.")
                continue
            layer_map = explicit if explicit is not None else _default_map(
                s_counts[stack], t_counts[stack], copied.get(stack))
            for s, t in layer_map.items():
                if s > s_counts[stack] or t > t_counts[stack]:
                    raise ValueError(
                        f"{stack} layer map {layer_map} names a layer that does not exist: the student has hidden "
                        f"states 0..{s_counts[stack]}, the teacher 0..{t_counts[stack]}."
                    )
            if layer_map:
                maps[stack] = layer_map
        if not maps:
            raise ValueError("alpha_hidden > 0 but no layer pair is left to match; give a layer map.")
        return maps

    # ---- the projections' optimizer --------------------------------------------------------------------------
    # Projections live outside the student (they must not be saved with it), so DDP, DeepSpeed and FSDP, which only
    # handle the model they wrap, never see them: they get an optimizer and schedule of their own (Trainer's
    # optimizer class and schedule, their own learning rate, no weight decay), stepped by `_ProjectionSteps` right
    # after Trainer's optimizer, with gradients averaged across processes and clipped first.

    def _projection_optimizer(self) -> torch.optim.Optimizer | None:
        """Made on first use, when the run's length is known; None when there is nothing to train."""
        if self.projection_optimizer is None:
            params = list(self.projections.parameters())
            if not params:
                return None
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs = {**kwargs, "lr": self.args.projection_learning_rate or self.args.learning_rate}
            self.projection_optimizer = cls([{"params": params, "weight_decay": 0.0}], **kwargs)
        if self.projection_scheduler is None:  # like Trainer's, remade for each train() call
            steps = self.state.max_steps
            self.projection_scheduler = get_scheduler(
                self.args.lr_scheduler_type, self.projection_optimizer, self.args.get_warmup_steps(steps), steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs)
        return self.projection_optimizer

    def _prepare_projection_grads(self) -> None:
        grads = [p.grad for p in self.projections.parameters() if p.grad is not None]
        if not grads:
            return
        world = self.accelerator.num_processes
        if world > 1:
            for grad in grads:
                torch.distributed.all_reduce(grad)
                grad /= world
        scaler = self.accelerator.scaler  # fp16: the loss was scaled before backward, for these gradients too
        if scaler is not None and scaler.is_enabled():
            for grad in grads:
                grad /= scaler.get_scale()
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.projections.parameters()), self.args.max_grad_norm)

    def _step_projections(self) -> None:
        optimizer = self._projection_optimizer()
        if optimizer is None:
            return
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: the student skipped this step too
            optimizer.step()
            self.projection_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    # ---- saving and resuming ---------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the student (projections and teacher are not part of it) and `distillation.json`."""
        token, self.args.hub_token = self.args.hub_token, None  # training_args.bin must not carry a Hub token
        try:
            super()._save(output_dir, state_dict=state_dict)
        finally:
            self.args.hub_token = token
        if self.args.should_save:
            record = self.distillation_record()
            Path(output_dir or self.args.output_dir, RECORD_FILE).write_text(json.dumps(record, indent=2))

    def distillation_record(self) -> dict[str, Any]:
        """How this student was made (recipe, teacher, layer maps, steps): saved beside it as distillation.json."""
        return {
            "teacher": (self.teacher.config._name_or_path or "teacher") if self.teacher is not None
            else "none (pseudo-labels)",
            "recipe": {k: getattr(self.args, k) for k in RECIPE_FIELDS},
            "layer_maps": {stack: {str(s): t for s, t in m.items()} for stack, m in self.layer_maps.items()},
            "shared_encoder": self.share_encoder,
            "steps": self.state.global_step,
        }

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Trainer's checkpoint plus the projections (`projections.safetensors`) and their optimizer and schedule
        (`projections_optimizer.pt`)."""
        super()._save_checkpoint(model, trial)
        if len(self.projections) and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            state = {k: v.detach().contiguous().cpu() for k, v in self.projections.state_dict().items()}
            save_file(state, os.path.join(folder, PROJECTIONS_FILE))
            if self._projection_optimizer() is not None:
                torch.save({"optimizer": self.projection_optimizer.state_dict(),
                            "scheduler": self.projection_scheduler.state_dict()},
                           os.path.join(folder, PROJECTION_OPTIMIZER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Trainer's optimizer and schedule, then the projections' own."""
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, PROJECTION_OPTIMIZER_FILE) if checkpoint else None
        if path and self._projection_optimizer() is not None and os.path.isfile(path):
            state = torch.load(path, map_location=self.args.device, weights_only=True)
            self.projection_optimizer.load_state_dict(state["optimizer"])
            self.projection_scheduler.load_state_dict(state["scheduler"])

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Trainer's resume plus the projections saved beside the checkpoint."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if len(self.projections):
            path = os.path.join(resume_from_checkpoint, PROJECTIONS_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} has no {PROJECTIONS_FILE}, but this run distils hidden "
                                 "states; resume with the same alpha_hidden and layer maps it was saved with.")
            self.projections.load_state_dict(load_file(path, device=str(self.args.device)))

    # ---- the loss --------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """`alpha_ce * hard + alpha_kd * kd + alpha_hidden * hidden`, scaled for gradient accumulation.

        Whisper's token-level terms are sums over label tokens divided by `num_items_in_batch` (all label tokens
        of the accumulated batch, across processes), so the loss is exact under gradient accumulation. Per-batch
        means (CTC, hidden states) are divided by the number of accumulation steps.
        """
        inputs = dict(inputs)
        example_ids = inputs.pop("example_id", None)
        terms_fn = self._whisper_terms if self.family == "whisper" else self._ctc_terms
        token_terms, count, mean_terms, outputs = terms_fn(model, inputs, example_ids)
        ga_steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        ga_steps = ga_steps if model.training else 1
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            token_scale = self.accelerator.num_processes / num_items_in_batch  # DDP averages gradients over processes
        elif num_items_in_batch is not None:
            token_scale = 1 / num_items_in_batch
        else:
            token_scale = 1 / (count.clamp(min=1) * ga_steps)
        weights = {"ce": self.args.alpha_ce, "kd": self.args.alpha_kd, "hidden": self.args.alpha_hidden}
        loss = outputs.logits.new_zeros((), dtype=torch.float32)
        loss = loss + sum(weights[name] * value * token_scale for name, value in token_terms.items())
        loss = loss + sum(weights[name] * value / ga_steps for name, value in mean_terms.items())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The distillation loss is not finite ({ {n: v.item() for n, v in {**token_terms, **mean_terms}.items()} }) "
                f"on the batch of examples {example_ids.tolist() if example_ids is not None else '(ids unknown)'}. "
                "Check those rows' audio and labels, or lower the learning rate."
            )
        metrics = self._metrics["train" if model.training else "eval"]
        for name, value in token_terms.items():
            metrics[f"loss_{name}"].append((value / count.clamp(min=1)).detach())
        for name, value in mean_terms.items():
            metrics[f"loss_{name}"].append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def _kd_per_position(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                         cached: CachedBatch | None) -> torch.Tensor:
        kd_fn, temperature = KD_LOSS_FNS[self.args.kd_loss], self.args.temperature
        if cached is not None:
            # k + 1 buckets (top-k and the tail) in log space; scaling by T undoes the functions' 1/T softening.
            student = student_buckets(student_logits, cached.indices, temperature)
            return kd_fn(student * temperature, bucket_logprobs(cached.logprobs) * temperature, temperature)
        return kd_fn(student_logits, align_time(teacher_logits, student_logits.shape[1]), temperature)

    def _whisper_terms(self, model: nn.Module, inputs: dict[str, Any], example_ids: torch.Tensor | None):
        args = self.args
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        config = self.accelerator.unwrap_model(model).config
        if "decoder_input_ids" not in inputs:
            inputs["decoder_input_ids"] = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
        mask = labels.ne(-100)
        cached = self._cached(example_ids, mask)
        if cached is not None and cached.encoder is not None:  # the frozen shared encoder ran once, at caching
            inputs.pop("input_features")
            inputs["encoder_outputs"] = (cached.encoder.to(self.accelerator.unwrap_model(model).dtype),)
        want_hidden = args.alpha_hidden > 0
        outputs = model(**inputs, output_hidden_states=want_hidden)
        token_terms, mean_terms = {}, {}
        if args.alpha_ce > 0:
            token_terms["ce"] = F.cross_entropy(outputs.logits.flatten(0, 1).float(), labels.flatten(),
                                                ignore_index=-100, reduction="sum")
        if self._teacher_terms(model):
            live = self._whisper_teacher(inputs, outputs, want_hidden) if cached is None else None
            teacher_logits = live.logits if live is not None else None
            teacher_hidden = ({"encoder": live.encoder_hidden_states, "decoder": live.decoder_hidden_states}
                              if live is not None and want_hidden else (cached.hidden if cached else None))
            if args.alpha_kd > 0:
                token_terms["kd"] = masked_sum(self._kd_per_position(outputs.logits, teacher_logits, cached), mask)[0]
            if want_hidden:
                states = {"encoder": (outputs.encoder_hidden_states, teacher_hidden.get("encoder"), None),
                          "decoder": (outputs.decoder_hidden_states, teacher_hidden.get("decoder"), mask)}
                mean_terms["hidden"] = self._hidden_loss(states)
        return token_terms, mask.sum(), mean_terms, outputs

    def _whisper_teacher(self, inputs: dict[str, Any], student_out: Any, want_hidden: bool):
        dtype = self.teacher.dtype
        teacher_inputs = dict(inputs)
        features = teacher_inputs.pop("input_features")
        if self.share_encoder:
            # The frozen student encoder is the teacher's: reuse its output instead of a second encoder pass.
            teacher_inputs["encoder_outputs"] = (student_out.encoder_last_hidden_state.to(dtype),)
        else:
            teacher_inputs["input_features"] = features.to(dtype)
        with torch.no_grad():
            return self.teacher_runner(**teacher_inputs, output_hidden_states=want_hidden)

    def _ctc_terms(self, model: nn.Module, inputs: dict[str, Any], example_ids: torch.Tensor | None):
        args = self.args
        want_hidden = args.alpha_hidden > 0
        outputs = model(**inputs, output_hidden_states=want_hidden)
        mean_terms = {}
        if args.alpha_ce > 0:
            mean_terms["ce"] = outputs.loss
        if self._teacher_terms(model):
            frames = outputs.logits.shape[1]
            mask = frame_mask(self.accelerator.unwrap_model(model), inputs.get("attention_mask"), frames)
            positions = mask if mask is not None else torch.ones(outputs.logits.shape[:2], dtype=torch.bool,
                                                                 device=outputs.logits.device)
            cached = self._cached(example_ids, positions)
            live = None
            if cached is None:
                teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
                teacher_inputs["input_values"] = teacher_inputs["input_values"].to(self.teacher.dtype)
                with torch.no_grad():
                    live = self.teacher_runner(**teacher_inputs, output_hidden_states=want_hidden)
            if args.alpha_kd > 0:
                per_frame = self._kd_per_position(outputs.logits, live.logits if live else None, cached)
                mean_terms["kd"] = masked_mean(per_frame, mask)
            if want_hidden:
                teacher_hidden = live.hidden_states if live is not None else cached.hidden["encoder"]
                mean_terms["hidden"] = self._hidden_loss({"encoder": (outputs.hidden_states, teacher_hidden, mask)})
        zero = outputs.logits.new_zeros(())
        return {}, zero, mean_terms, outputs

    def _cached(self, example_ids: torch.Tensor | None, positions: torch.Tensor) -> CachedBatch | None:
        if self.cache is None or not self.model.training:
            return None
        if example_ids is None:
            raise ValueError("A teacher cache needs `example_id` in every batch: prepare the dataset with "
                             "prepare_dataset and batch it with collator_for.")
        return self.cache.batch(example_ids.tolist(), positions, positions.device)

    def _hidden_loss(self, states: dict[str, tuple[Any, Any, torch.Tensor | None]]) -> torch.Tensor:
        """Mean over mapped layer pairs of the hidden loss between projected student and (time-aligned) teacher."""
        loss_fn = HIDDEN_LOSS_FNS[self.args.hidden_loss]
        losses = {}
        for stack, layer_map in self.layer_maps.items():
            student_states, teacher_states, mask = states[stack]
            for s, t in layer_map.items():
                key = projection_key(stack, s, t)
                # fp32 like the projections: under DeepSpeed bf16 the states are bf16 and nothing autocasts them
                projected = self.projections[key](student_states[s].float())
                target = align_time(teacher_states[t], projected.shape[1]).float()
                losses[key] = masked_mean(loss_fn(projected, target), mask)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("hidden losses: %s", {k: round(v.item(), 5) for k, v in losses.items()})
        return torch.stack(list(losses.values())).mean()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (`loss_ce`, `loss_kd`, `loss_hidden`)."""
        mode = "train" if "loss" in logs else "eval" if "eval_loss" in logs else None
        if mode is not None:
            prefix = "" if mode == "train" else "eval_"
            for name, values in self._metrics[mode].items():
                value = self.accelerator.reduce(torch.stack(values).mean(), reduction="mean")
                logs[prefix + name] = round(value.item(), 6)
            self._metrics[mode].clear()
        super().log(logs, start_time)

    # ---- model card and Hub ----------------------------------------------------------------------------------

    def model_card(self, repo_id: str | None = None, **kwargs: Any):
        """The student's card: recipe, layer maps, and the report in `output_dir/report/report.json` if present."""
        output_dir = Path(self.args.output_dir)
        report = output_dir / "report" / "report.json"
        results, meta = results_from_report(report) if report.exists() else ([], {})
        record = self.distillation_record()
        meta = {**meta, "layer_maps": record["layer_maps"] or None, "chart": report.with_suffix(".png").exists()}
        return build_model_card(
            repo_id=repo_id or self.args.hub_model_id or output_dir.name, teacher=record["teacher"],
            recipe=record["recipe"], student_config=self.accelerator.unwrap_model(self.model).config,
            results=results, meta=meta, steps=record["steps"], **kwargs,
        )

    def push_to_hub(self, commit_message: str | None = "End of training", token: str | None = None,
                    private: bool | None = None, **card_kwargs: Any) -> Any:
        """Save the student and upload it with its processor, generation config and card (see `push_student`).

        The teacher, projections, checkpoints and training arguments stay local.
        """
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        card = self.model_card(repo_id, **card_kwargs)
        chart = Path(self.args.output_dir) / "report" / "report.png"
        if chart.exists():
            shutil.copy(chart, Path(self.args.output_dir) / "report.png")
        return push_student(self.args.output_dir, repo_id, card, token=token or self.args.hub_token,
                            private=self.args.hub_private_repo if private is None else private,
                            commit_message=commit_message or "Upload distilled student")
