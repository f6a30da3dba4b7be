"""Controlled studies of the paper's claims on the synthetic set (``python -m reid.study``).

``misalignment``: does AP3D beat plain 3D convolution when boxes are misaligned? A grid of
networks x misalignment levels x seeds, every cell a normal ``python -m reid.train`` run from
one shared 2D backbone pretrained on a disjoint synthetic set; see README "Misalignment study".
"""
from .aggregate import aggregate, write_outputs
from .grid import BUDGETS, Budget, Cell, Study, build_study
from .pretrain import c2d_to_torchvision_2d
from .temporal_norms import temporal_weight_norms

__all__ = ["BUDGETS", "Budget", "Cell", "Study", "build_study", "aggregate", "write_outputs",
           "c2d_to_torchvision_2d", "temporal_weight_norms"]
