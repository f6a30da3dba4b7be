"""Registration of the Triton kernels as the contract's operators: ``torch.ops.ap3d_triton.apm_fwd``
and ``apm_bwd``, with the schemas shared by every backend (``ap3d_kernels.backends``).

They are ``torch.library.custom_op``s rather than ``triton_op``s: ``triton_op`` makes the
compiler trace into the kernels, which the interpreter cannot do, so only ``custom_op`` is the
same, tested operator on CPU CI and on the GPU. ``torch.compile`` keeps each as one opaque node.
Fake kernels, autograd and FLOP formulas are the shared ones (``registration.register_core``).
"""
from __future__ import annotations

from torch.library import custom_op

from .. import BACKWARD_SCHEMA, FORWARD_SCHEMA
from ..registration import register_core
from .launchers import launch_backward, launch_forward

__all__ = ["apm_fwd", "apm_bwd"]


@custom_op("ap3d_triton::apm_fwd", mutates_args=(), schema=FORWARD_SCHEMA)
def apm_fwd(x, q, vphi, tw, scale, time_dim, contrastive, detach_gate_inputs):
    return launch_forward(x, q, vphi, tw, scale, time_dim, contrastive)


@custom_op("ap3d_triton::apm_bwd", mutates_args=(), schema=BACKWARD_SCHEMA)
def apm_bwd(grad_out, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive, detach_gate_inputs):
    return launch_backward(grad_out, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive,
                           detach_gate_inputs)


register_core("ap3d_triton", backend="triton")
