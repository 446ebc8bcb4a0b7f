"""Hidden-state projections and their whole lifecycle: layer maps, creation, optimizer and schedule, gradient
averaging and clipping, checkpoint files, restore on resume.

Projections are trainable state of the distillation *run*, not of the student: they are never saved with it. They
live outside the student, so the backends' wrappers (DDP, DeepSpeed, FSDP), which handle only the model they wrap,
never see them: they get an optimizer and schedule of their own (Trainer's optimizer class and schedule, their own
learning rate, no weight decay), stepped right after Trainer's optimizer through two Trainer events every backend
emits, with gradients averaged across processes and clipped first. Their weights and optimizer state are saved in
every checkpoint and restored from `_load_optimizer_and_scheduler`, which Trainer calls on every resume path
(DeepSpeed's included, which never reaches `_load_from_checkpoint`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback, get_scheduler

from .families import Family
from .losses import HIDDEN_LOSS_FNS, align_time, masked_mean

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "projections.safetensors"
PROJECTION_OPTIMIZER_FILE = "projections_optimizer.pt"
LAYERDROP_FIELDS = ("layerdrop", "encoder_layerdrop", "decoder_layerdrop")


def projection_key(stack: str, student_layer: int, teacher_layer: int) -> str:
    """Name of the projection for one layer pair, e.g. `decoder_2_to_4`."""
    return f"{stack}_{student_layer}_to_{teacher_layer}"


def make_projection(kind: str, student_dim: int, teacher_dim: int) -> nn.Module:
    """One projection: 'linear', 'mlp' (linear-GELU-linear) or 'none' (identity, equal sizes only)."""
    if kind == "none":
        if student_dim != teacher_dim:
            raise ValueError(
                f"projection='none' needs equal hidden sizes, but student {student_dim} != teacher {teacher_dim}; "
                "use projection='linear' or 'mlp'."
            )
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(student_dim, teacher_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.GELU(), nn.Linear(teacher_dim, teacher_dim))
    raise ValueError(f"projection={kind!r} is not supported; choose one of linear, mlp, none.")


def build_projections(
    layer_maps: dict[str, dict[int, int]], dims: dict[str, tuple[int, int]], kind: str, learning_rate: float = 1e-4
) -> "Projections":
    """Projections for every pair in `layer_maps` (stack -> {student layer: teacher layer}).

    `dims` gives (student_dim, teacher_dim) per stack.
    """
    modules = {}
    for stack, layer_map in layer_maps.items():
        student_dim, teacher_dim = dims[stack]
        for s, t in sorted(layer_map.items()):
            modules[projection_key(stack, s, t)] = make_projection(kind, student_dim, teacher_dim)
    return Projections(modules, learning_rate)


# ---- layer maps ------------------------------------------------------------------------------------------------


def default_map(n_student: int, n_teacher: int, copied: dict[str, int] | None) -> dict[int, int]:
    """Hidden-state indices: each student layer to the teacher layer it was copied from, else spaced, last to last."""
    if copied is not None and len(copied) == n_student:
        return {int(s) + 1: int(t) + 1 for s, t in copied.items()}
    return {s: round(s * n_teacher / n_student) for s in range(1, n_student + 1)}


def _explicit_maps(family: Family, args: Any) -> dict[str, dict[int, int] | None]:
    """The layer maps given in the config, refusing the fields that belong to another family."""
    own = set(family.layer_map_fields.values())
    for name in ("hidden_layer_map", "encoder_layer_map", "decoder_layer_map"):
        if name not in own and getattr(args, name) is not None:
            fields = " and ".join(family.layer_map_fields.values())
            raise ValueError(f"{family.title} models use {fields}, not {name}.")
    return {stack: getattr(args, field) for stack, field in family.layer_map_fields.items()}


def resolve_layer_maps(family: Family, args: Any, student_config: Any, teacher_config: Any,
                       shared_encoder: bool) -> dict[str, dict[int, int]]:
    """Hidden-state layer maps per stack, in `output_hidden_states` indices; empty when alpha_hidden is 0."""
    if args.alpha_hidden == 0:
        return {}
    for name in LAYERDROP_FIELDS:
        if getattr(student_config, name, 0) > 0:
            raise ValueError(
                f"The student has {name}={getattr(student_config, name)}: layers dropped at random cannot be "
                f"matched to teacher layers. Set student.config.{name} = 0.0 for hidden-state distillation."
            )
    s_counts, t_counts = family.layer_counts(student_config), family.layer_counts(teacher_config)
    copied = getattr(student_config, "distillation_layer_map", None) or {}
    maps = {}
    for stack, explicit in _explicit_maps(family, args).items():
        if stack == "encoder" and shared_encoder:
            if explicit:
                raise ValueError("encoder_layer_map is pointless: the frozen student encoder equals the teacher's.")
            continue
        layer_map = explicit if explicit is not None else default_map(s_counts[stack], t_counts[stack],
                                                                     copied.get(stack))
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


# ---- the run's projections -------------------------------------------------------------------------------------


class Projections(nn.ModuleDict):
    """The projections of one run (a `ModuleDict` keyed by `projection_key`) with their optimizer, schedule,
    gradient handling and checkpoint files."""

    def __init__(self, modules: dict[str, nn.Module], learning_rate: float) -> None:
        super().__init__(modules)
        self.learning_rate = learning_rate
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    def hidden_loss(self, layer_maps: dict[str, dict[int, int]], student_states: dict, teacher_states: dict,
                    masks: dict, loss_name: str) -> torch.Tensor:
        """Mean over mapped layer pairs of the hidden loss between projected student and (time-aligned) teacher
        states, each averaged over the stack's real positions (`masks`)."""
        loss_fn = HIDDEN_LOSS_FNS[loss_name]
        losses = {}
        for stack, layer_map in layer_maps.items():
            for s, t in layer_map.items():
                key = projection_key(stack, s, t)
                # fp32 like the projections: under DeepSpeed bf16 the states are bf16 and nothing autocasts them
                projected = self[key](student_states[stack][s].float())
                target = align_time(teacher_states[stack][t], projected.shape[1]).float()
                losses[key] = masked_mean(loss_fn(projected, target), masks[stack])
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("hidden losses: %s", {k: round(v.item(), 5) for k, v in losses.items()})
        return torch.stack(list(losses.values())).mean()

    def ensure_optimizer(self, trainer: Any) -> torch.optim.Optimizer | None:
        """Made on first use, when the run's length is known; None when there is nothing to train."""
        if self.optimizer is None:
            params = list(self.parameters())
            if not params:
                return None
            cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
            self.optimizer = cls([{"params": params, "weight_decay": 0.0}], **{**kwargs, "lr": self.learning_rate})
        if self.scheduler is None:  # like Trainer's, remade for each train() call
            args, steps = trainer.args, trainer.state.max_steps
            self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, args.get_warmup_steps(steps), steps,
                                           scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        return self.optimizer

    def prepare_gradients(self, accelerator: Any, max_grad_norm: float | None) -> None:
        """Average over processes, undo the fp16 loss scale, clip: what Trainer does for the student's gradients."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        world = accelerator.num_processes
        if world > 1:
            for grad in grads:
                torch.distributed.all_reduce(grad)
                grad /= world
        scaler = accelerator.scaler  # fp16: the loss was scaled before backward, for these gradients too
        if scaler is not None and scaler.is_enabled():
            for grad in grads:
                grad /= scaler.get_scale()
        if max_grad_norm and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.parameters()), max_grad_norm)

    def step(self, trainer: Any) -> None:
        """One optimizer and schedule step, skipped with the student's when fp16 overflowed."""
        optimizer = self.ensure_optimizer(trainer)
        if optimizer is None:
            return
        if not trainer.accelerator.optimizer_step_was_skipped:
            optimizer.step()
            self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def save(self, folder: str, trainer: Any) -> None:
        """`projections.safetensors` and `projections_optimizer.pt` into a checkpoint folder."""
        if not len(self):
            return
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(folder, PROJECTIONS_FILE))
        if self.ensure_optimizer(trainer) is not None:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       os.path.join(folder, PROJECTION_OPTIMIZER_FILE))

    def load(self, folder: str, trainer: Any) -> None:
        """Restore weights, optimizer and schedule from a checkpoint folder; refuse one without the weights."""
        if not len(self):
            return
        path = os.path.join(folder, PROJECTIONS_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{folder} has no {PROJECTIONS_FILE}, but this run distils hidden states; resume with "
                             "the same alpha_hidden and layer maps it was saved with.")
        self.load_state_dict(load_file(path))  # copied onto the projections' own device
        path = os.path.join(folder, PROJECTION_OPTIMIZER_FILE)
        if self.ensure_optimizer(trainer) is not None and os.path.isfile(path):
            state = torch.load(path, map_location=next(self.parameters()).device, weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])


class ProjectionSteps(TrainerCallback):
    """Steps the projections' optimizer with Trainer's: every backend emits these two events around its step."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.projections.prepare_gradients(self.trainer.accelerator, args.max_grad_norm)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.projections.step(self.trainer)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.projections.scheduler = None  # a later train() gets a schedule of its own length
