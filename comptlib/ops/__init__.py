"""Tensor-level growth operators shared by the families.

Families describe each target tensor as a :class:`Canvas`: the target's own
initialisation, onto which source values are placed. The canvas remembers
what was written, so symmetry-breaking noise can go exactly where the growth
method allows it.
"""

from comptlib.ops.canvas import Canvas
from comptlib.ops.depth import compt_depth_map, exact_depth_map
from comptlib.ops.width import head_index, mean_rows, norm_scale, prefix

__all__ = [
    "Canvas",
    "compt_depth_map",
    "exact_depth_map",
    "head_index",
    "mean_rows",
    "norm_scale",
    "prefix",
]
