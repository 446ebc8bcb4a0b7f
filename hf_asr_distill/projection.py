"""Learned projections from student hidden size to teacher hidden size, one per mapped layer pair.

They are trainable state of the distillation *run*: the trainer puts them in the optimizer and in checkpoints,
and keeps them out of the exported student.
"""

from __future__ import annotations

from torch import nn


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
    layer_maps: dict[str, dict[int, int]], dims: dict[str, tuple[int, int]], kind: str
) -> nn.ModuleDict:
    """Projections for every pair in `layer_maps` (stack -> {student layer: teacher layer}).

    `dims` gives (student_dim, teacher_dim) per stack.
    """
    modules = {}
    for stack, layer_map in layer_maps.items():
        student_dim, teacher_dim = dims[stack]
        for s, t in sorted(layer_map.items()):
            modules[projection_key(stack, s, t)] = make_projection(kind, student_dim, teacher_dim)
    return nn.ModuleDict(modules)
