"""Tensor-level growth operators shared by the families.

Families describe each target tensor as a :class:`Canvas`: the target's own
initialisation, onto which source values are placed. The canvas remembers
what was written, so symmetry-breaking noise can go exactly where the growth
method allows it (a :class:`Writer` puts it there). :mod:`comptlib.ops.transformer`
holds the arithmetic every transformer family shares: residual-stream fill
rules, norm, reader, writer and embedding growth, identity blocks, head
placement and the warm start.
"""

from comptlib.ops.canvas import Canvas, Writer, lazy_init
from comptlib.ops.depth import compt_depth_map, exact_depth_map, stack_depth_map
from comptlib.ops.heads import gqa_placement, head_dims, rope_dim_map, rope_mismatch, shared_placement, slot_dim_maps
from comptlib.ops.transformer import (
    HeadPlan,
    Proj,
    ResidualStream,
    compt_copy,
    corner,
    grow_embedding,
    grow_norm,
    grow_reader,
    grow_writer,
    head_plan,
    identity_block,
    shared_head_plan,
)
from comptlib.ops.width import mean_rows, norm_scale

__all__ = [
    "Canvas",
    "HeadPlan",
    "Proj",
    "ResidualStream",
    "Writer",
    "compt_copy",
    "compt_depth_map",
    "corner",
    "exact_depth_map",
    "gqa_placement",
    "grow_embedding",
    "grow_norm",
    "grow_reader",
    "grow_writer",
    "head_dims",
    "head_plan",
    "identity_block",
    "lazy_init",
    "mean_rows",
    "norm_scale",
    "rope_dim_map",
    "rope_mismatch",
    "shared_head_plan",
    "shared_placement",
    "slot_dim_maps",
    "stack_depth_map",
]
