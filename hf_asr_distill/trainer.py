"""`DistillationTrainer`: a `Seq2SeqTrainer` whose loss mixes hard labels, teacher outputs and hidden states.

This module is about the loss: its terms, their logging and the evaluation hooks. Family differences are asked of
`families/`; the teacher's placement lives in `teacher.py`, the projections' lifecycle (and their hidden-state loss)
in `projection.py`, the cache in `cache.py`, saving/resuming/publishing in `checkpoints.py`, the collective handling
of a non-finite loss in `distributed.py`.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from typing import Any

import datasets
import torch
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer

from .cache import CachedBatch, CachedCollator, TeacherCache, open_cache
from .checkpoints import CheckpointHooks
from .config import DistillationConfig
from .distributed import skip_nonfinite
from .families import family_of
from .losses import masked_mean, masked_sum, output_kd
from .projection import PROJECTIONS_FILE, ProjectionSteps, build_projections, resolve_layer_maps
from .student import load_model
from .teacher import check_backend, check_pair, shares_encoder, teacher_dtype, teacher_runner, zero_stage

logger = logging.getLogger(__name__)

__all__ = ["DistillationTrainer", "PROJECTIONS_FILE", "check_backend", "check_pair"]


class DistillationTrainer(CheckpointHooks, Seq2SeqTrainer):
    """Trainer that distils `teacher_model` into `model` (the student).

    The loss is `alpha_ce * hard + alpha_kd * output_kd + alpha_hidden * hidden`, each term logged as `loss_ce`,
    `loss_kd` and `loss_hidden`. Output-layer KD counts label tokens (Whisper) or real audio frames (CTC). The
    teacher is frozen, in eval mode, run without gradients, never wrapped for gradient synchronisation and never
    saved with the student. `eval_loss` is the student's hard-label loss per label token on every evaluation path;
    the distillation terms are logged beside it.
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
        if isinstance(teacher_model, str):
            teacher_model = load_model(teacher_model, dtype=teacher_dtype(args.teacher_dtype, args.use_cpu))
        self.family = check_pair(teacher_model, model, args) if teacher_model is not None else family_of(model)
        super().__init__(model=model, args=args, **kwargs)
        check_backend(args, deepspeed=self.is_deepspeed_enabled, fsdp=self.is_fsdp_enabled)
        # Every hard-label term is a sum over label tokens: let Trainer count them over the accumulated batch.
        self.model_accepts_loss_kwargs = True
        if self.processing_class is not None:
            self.family.check_processor(self.model, self.processing_class)
        # the student generates as it was trained: in its language, for its task (saved in its generation config)
        self.family.set_generation_defaults(self.model, args.language, args.task)
        self._setup_teacher(teacher_model, teacher_cache)
        self.nonfinite_skipped = 0  # batches skipped for a non-finite loss (nonfinite_loss="skip")
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        logger.info("Distillation: family=%s shared encoder=%s layer maps=%s", self.family.name, self.share_encoder,
                    self.layer_maps)
        if args.push_to_hub:
            self.model_card()  # a card that cannot render fails now, not after training

    def _setup_teacher(self, teacher_model: PreTrainedModel | None, teacher_cache: TeacherCache | str | None) -> None:
        """Place the teacher (`teacher_runner` is what runs: a ZeRO-3 engine or the model), decide encoder sharing,
        resolve the layer maps, build the projections and open the cache."""
        args = self.args
        if teacher_cache is not None and not isinstance(teacher_cache, TeacherCache):
            teacher_cache = TeacherCache(teacher_cache)
        self.teacher_runner = teacher_runner(teacher_model, self.accelerator, args, teacher_cache)
        self.teacher = self.accelerator.unwrap_model(self.teacher_runner) if self.teacher_runner is not None else None
        student = self.accelerator.unwrap_model(self.model)
        partitioned = self.is_deepspeed_enabled and zero_stage(self.accelerator) == 3
        self.share_encoder = shares_encoder(self.family, student, self.teacher, args.share_frozen_encoder, partitioned)
        self.layer_maps = {} if self.teacher is None else resolve_layer_maps(
            self.family, args, student.config, self.teacher.config, self.share_encoder)
        self.cache = None if teacher_cache is None else open_cache(
            teacher_cache, self.teacher, self.train_dataset, self.processing_class, args.temperature,
            self.layer_maps, self.share_encoder)
        widths = {stack: (self.family.hidden_size(student.config), self.family.hidden_size(self.teacher.config))
                  for stack in self.layer_maps}
        self.projections = build_projections(self.layer_maps, widths, args.projection,
                                             args.projection_learning_rate or args.learning_rate).to(args.device)
        self.add_callback(ProjectionSteps(self))

    @property
    def projection_optimizer(self) -> torch.optim.Optimizer | None:
        """The projections' own optimizer (None until training starts, or when nothing is projected)."""
        return self.projections.optimizer

    def _teacher_terms(self, model: nn.Module) -> bool:
        """Whether this step compares with the teacher. A cache covers the training set only, so evaluation
        batches with a cache get the hard-label loss alone."""
        needed = self.args.alpha_kd > 0 or self.args.alpha_hidden > 0
        return needed and (self.cache is None or model.training)

    # ---- the loss --------------------------------------------------------------------------------------------

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        """`alpha_ce * hard + alpha_kd * kd + alpha_hidden * hidden`, scaled for gradient accumulation.

        Terms over label tokens are sums divided by `num_items_in_batch` (the label tokens of the accumulated batch,
        across processes), so the loss is exact under gradient accumulation; per-batch means (frame-level KD,
        hidden states) are divided by the accumulation steps. In evaluation the loss returned is the student's
        hard-label loss per label token, and every term is logged beside it.
        """
        inputs = dict(inputs)
        cached = CachedBatch.from_batch(inputs)  # read by the DataLoader's workers (CachedCollator)
        example_ids = inputs.pop("example_id", None)
        unwrapped = self.accelerator.unwrap_model(model)
        with_teacher = self._teacher_terms(model)
        positions = self.family.positions(unwrapped, inputs)
        if cached is None and self.cache is not None and model.training:  # a batch not made by get_train_dataloader
            cached = self._cached(example_ids, positions, inputs.get("labels"))
        model_inputs = self.family.model_inputs(unwrapped, inputs)
        if cached is not None and cached.encoder is not None and self.share_encoder:
            # the frozen shared encoder ran once, at caching
            model_inputs = self.family.with_encoder_output(model_inputs, cached.encoder.to(unwrapped.dtype))
        elif self.family.feature_key not in model_inputs:
            raise ValueError(f"The batch has no {self.family.feature_key}: datasets prepared with features=False "
                             "train only from an encoder-output cache, with the student's frozen encoder shared.")
        want_hidden = with_teacher and self.args.alpha_hidden > 0
        outputs = model(**model_inputs, output_hidden_states=want_hidden)
        token_terms, mean_terms = self._terms(unwrapped, inputs, model_inputs, outputs, positions, cached,
                                              with_teacher, want_hidden)
        count = inputs["labels"].ne(-100).sum() if "labels" in inputs else positions.sum()
        loss = self._weighted(model, token_terms, mean_terms, count, num_items_in_batch, example_ids)
        metrics = self._metrics["train" if model.training else "eval"]
        for name, value in token_terms.items():
            metrics[f"loss_{name}"].append((value / count.clamp(min=1)).detach())
        for name, value in mean_terms.items():
            metrics[f"loss_{name}"].append(value.detach())
        if not model.training and "ce" in token_terms:  # eval_loss: one meaning on every evaluation path
            loss = token_terms["ce"].detach() / count.clamp(min=1)
        elif not model.training and "ce" in mean_terms:
            loss = mean_terms["ce"].detach()
        return (loss, {"logits": outputs.logits}) if return_outputs else loss

    def _terms(self, model: PreTrainedModel, inputs: dict[str, Any], model_inputs: dict[str, Any], outputs: Any,
               positions: torch.Tensor, cached: CachedBatch | None, with_teacher: bool, want_hidden: bool):
        """The loss terms: sums over label tokens (`token_terms`) and per-batch means (`mean_terms`)."""
        token_terms, mean_terms = {}, {}
        if "labels" in inputs and (self.args.alpha_ce > 0 or not model.training):
            hard = self.family.hard_loss(model, outputs, inputs, self.args.label_smoothing_factor)
            (token_terms if self.family.hard_loss_per_token else mean_terms)["ce"] = hard
        if not with_teacher:
            return token_terms, mean_terms
        cached_hidden = cached.hidden if cached is not None else {}
        needs_live = cached is None or (self.args.alpha_kd > 0 and cached.logprobs is None) or (
            want_hidden and not set(self.layer_maps) <= set(cached_hidden))
        # the teacher's encoder output, when cached (unless its encoder's hidden states are needed and not cached)
        encoder = cached.encoder if cached is not None else None
        if want_hidden and "encoder" in self.layer_maps and "encoder" not in cached_hidden:
            encoder = None
        live = self._run_teacher(model_inputs, outputs, want_hidden, encoder) if needs_live else None
        if cached is not None and cached.logprobs is None:
            cached = None  # no cached probabilities: the KD below uses the live teacher
        if self.args.alpha_kd > 0:
            if cached is not None:
                per_position = output_kd(self.args.kd_loss, outputs.logits, self.args.temperature,
                                         topk_logprobs=cached.logprobs, topk_indices=cached.indices)
            else:
                per_position = output_kd(self.args.kd_loss, outputs.logits, self.args.temperature, live.logits)
            if self.family.kd_per_label_token:
                token_terms["kd"] = masked_sum(per_position, positions)[0]
            else:
                mean_terms["kd"] = masked_mean(per_position, positions)
        if want_hidden:  # each stack from the cache when it holds it, else from the live teacher
            teacher_states = {**(self.family.hidden_states(live) if live is not None else {}), **cached_hidden}
            mean_terms["hidden"] = self.projections.hidden_loss(
                self.layer_maps, self.family.hidden_states(outputs), teacher_states,
                self.family.hidden_masks(positions), self.args.hidden_loss)
        return token_terms, mean_terms

    def _weighted(self, model: nn.Module, token_terms: dict, mean_terms: dict, count: torch.Tensor,
                  num_items_in_batch: torch.Tensor | int | None, example_ids: torch.Tensor | None) -> torch.Tensor:
        ga_steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        ga_steps = ga_steps if model.training else 1
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            token_scale = self.accelerator.num_processes / num_items_in_batch  # DDP averages over processes
        elif num_items_in_batch is not None:
            token_scale = 1 / num_items_in_batch
        else:
            token_scale = 1 / (count.clamp(min=1) * ga_steps)
        weights = {"ce": self.args.alpha_ce, "kd": self.args.alpha_kd, "hidden": self.args.alpha_hidden}
        loss = count.new_zeros((), dtype=torch.float32)
        loss = loss + sum(weights[name] * value * token_scale for name, value in token_terms.items())
        loss = loss + sum(weights[name] * value / ga_steps for name, value in mean_terms.items())
        if not skip_nonfinite(self.accelerator, loss, {**token_terms, **mean_terms}, example_ids, model.training,
                              self.args.nonfinite_loss):
            return loss
        self.nonfinite_skipped += 1
        # zero gradients on every process, through every trainable weight, so gradient sync happens as usual
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0

    def _run_teacher(self, model_inputs: dict[str, Any], student_outputs: Any, want_hidden: bool,
                     cached_encoder: torch.Tensor | None = None) -> Any:
        """The teacher's forward on the student's batch; its encoder is skipped when the student's (shared) or a
        cached encoder output stands in for it."""
        dtype = self.teacher.dtype
        if self.share_encoder or cached_encoder is not None:
            encoder = cached_encoder if cached_encoder is not None else self.family.encoder_output(student_outputs)
            teacher_inputs = self.family.with_encoder_output(model_inputs, encoder.to(dtype))
        else:
            key = self.family.feature_key
            teacher_inputs = {**model_inputs, key: model_inputs[key].to(dtype)}
        with torch.no_grad():
            return self.teacher_runner(**teacher_inputs, output_hidden_states=want_hidden)

    def _cached(self, example_ids: torch.Tensor | None, positions: torch.Tensor,
                labels: torch.Tensor | None) -> CachedBatch:
        if example_ids is None:
            raise ValueError("A teacher cache needs `example_id` in every batch: prepare the dataset with "
                             "prepare_dataset and batch it with collator_for.")
        return self.cache.batch(example_ids.tolist(), positions, positions.device, labels)

    def _get_train_sampler(self, train_dataset: Any = None):
        """Trainer's sampler, given the rows without their feature transform: `group_by_length` then reads the kept
        `duration` column instead of decoding every row's audio."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, datasets.Dataset) and dataset.format.get("type") == "custom":
            dataset = dataset.with_format(None)
        return super()._get_train_sampler(dataset)

    def get_train_dataloader(self):
        """Trainer's loader; with a teacher cache, its workers also read each batch's cached teacher outputs."""
        if self.cache is None:
            return super().get_train_dataloader()
        collate = self.data_collator
        positions = functools.partial(self.family.positions, self.accelerator.unwrap_model(self.model))
        self.data_collator = CachedCollator(collate, self.cache, positions)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collate

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (`loss_ce`, `loss_kd`, `loss_hidden`)."""
        mode = "train" if "loss" in logs else "eval" if "eval_loss" in logs else None
        if mode is not None:
            prefix = "" if mode == "train" else "eval_"
            for name, values in self._metrics[mode].items():
                value = self.accelerator.reduce(torch.stack(values).mean(), reduction="mean")
                logs[prefix + name] = round(value.item(), 6)
            self._metrics[mode].clear()
            if mode == "train" and self.nonfinite_skipped:
                logs["nonfinite_skipped"] = self.nonfinite_skipped
        super().log(logs, start_time)

    # ---- evaluation ------------------------------------------------------------------------------------------

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None, **gen_kwargs: Any):
        """Evaluation. With generation the terms are logged first (generation itself sees only model inputs);
        otherwise logits of padded frames are made blanks so that `compute_metrics` decodes only real audio."""
        unwrapped = self.accelerator.unwrap_model(model)
        generating = self.args.predict_with_generate and not prediction_loss_only
        inputs = self._prepare_inputs(inputs)
        if generating:
            if "labels" in inputs and self._teacher_terms(model):
                with torch.no_grad():
                    self.compute_loss(model, inputs)
            batch, labels = inputs, {"labels": inputs["labels"]} if "labels" in inputs else {}
            inputs = {k: v for k, v in self.family.model_inputs(unwrapped, inputs).items() if k != "decoder_input_ids"}
            inputs.update(labels)
            gen_kwargs = {**(gen_kwargs or getattr(self, "_gen_kwargs", {})),
                           **self.family.generation_options(unwrapped, batch)}
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)
        if logits is not None and not generating:
            logits = self.family.evaluation_logits(unwrapped, inputs, logits)
        return loss, logits, labels
