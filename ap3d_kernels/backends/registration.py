"""What PyTorch needs around a backend's APM core operators, registered the same for every backend.

``register_core(namespace)`` adds, for ``<namespace>::apm_fwd`` and ``<namespace>::apm_bwd``
(defined with the contract's schemas, see :mod:`ap3d_kernels.backends`):

- fake (meta) kernels, so ``torch.compile`` and ``opcheck`` can trace them;
- the autograd formula: ``apm_fwd``'s first output is differentiable, ``apm_bwd`` computes the
  gradients of x, q, vphi and tw; double backward is refused with a clear error;
- the FLOP formulas of :mod:`ap3d_kernels.flops` for ``torch.utils.flop_counter``.

Backend modules call it at import, so everything is in place before the first call (a
``FlopCounterMode`` snapshots the registered formulas when it is created, and a compiled
region must not trace a registration).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from ..flops import core_backward_flops, core_forward_flops
from . import accumulation_dtype, output_memory_format

__all__ = ["register_core", "DOUBLE_BACKWARD_MESSAGE"]

DOUBLE_BACKWARD_MESSAGE = (
    "double backward is not supported by the fused APM {backend!r} backend (its backward is a fused "
    "kernel with no derivative of its own); use backend='reference' for higher-order gradients"
)


class _RefuseDoubleBackward(torch.autograd.Function):
    """Identity on first-order gradients whose own backward raises: ``once_differentiable``'s
    idea, with a message that says what to do. create_graph=True still gives correct first-order
    gradients; only differentiating them again fails. The node also takes the tensors the
    gradients depend on (x, q, ..., grad_out), so it lies on every path back to them and
    ``torch.autograd.grad(..., inputs=[x])`` cannot skip it and return a silently wrong result."""

    @staticmethod
    def forward(ctx, message, n_grads, *tensors):
        ctx.message = message
        return tuple(g.view_as(g) for g in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(ctx.message)


def _guard_double_backward(backend: str, grads, inputs) -> tuple:
    """Wrap ``grads`` so that differentiating them raises, when a graph of them is being built."""
    if not torch.is_grad_enabled():  # no create_graph: nothing will differentiate the gradients
        return grads
    depends_on = [t for t in inputs if t is not None and t.requires_grad]
    if not depends_on:
        return grads
    present = [i for i, g in enumerate(grads) if g is not None]
    wrapped = _RefuseDoubleBackward.apply(
        DOUBLE_BACKWARD_MESSAGE.format(backend=backend), len(present), *(grads[i] for i in present), *depends_on
    )
    out = list(grads)
    for i, g in zip(present, wrapped):
        out[i] = g
    return tuple(out)


def register_core(namespace: str, backend: str) -> None:
    """Fake kernels, autograd and FLOP formulas of ``<namespace>::apm_fwd`` / ``apm_bwd``."""
    fwd_name, bwd_name = f"{namespace}::apm_fwd", f"{namespace}::apm_bwd"
    ops = getattr(torch.ops, namespace)

    def forward_fake(x, q, vphi, tw, scale, time_dim, contrastive, detach_gate_inputs):
        B, C, T, H, W = x.shape
        acc = accumulation_dtype(x.dtype)
        rows = (B, T, time_dim - 1, H * W)
        out = torch.empty((B, C, time_dim * T, H, W), dtype=x.dtype, device=x.device,
                          memory_format=output_memory_format(x))
        lse = x.new_empty(rows, dtype=acc)
        if contrastive:
            return out, lse, x.new_empty(rows, dtype=acc), x.new_empty((*rows, q.shape[-1]), dtype=acc)
        return out, lse, x.new_empty((0,), dtype=acc), x.new_empty((0,), dtype=acc)

    def backward_fake(grad_out, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive,
                       detach_gate_inputs):
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
        grad_q = q.new_empty(q.shape)
        if contrastive:
            return grad_x, grad_q, q.new_empty(q.shape), q.new_empty(q.shape)
        return grad_x, grad_q, q.new_empty((0,)), q.new_empty((0,))

    # Attributed to the caller (the backend module): a C++ library's m.set_python_module names it.
    torch.library.register_fake(fwd_name, forward_fake, _stacklevel=2)
    torch.library.register_fake(bwd_name, backward_fake, _stacklevel=2)

    def setup_context(ctx, inputs, output):
        x, q, vphi, tw, scale, time_dim, contrastive, detach_gate_inputs = inputs
        out, lse, gate, phi = output
        ctx.save_for_backward(x, q, vphi, tw, out, lse, gate, phi)
        ctx.args = (scale, time_dim, contrastive, detach_gate_inputs)
        ctx.mark_non_differentiable(lse, gate, phi)

    def backward(ctx, grad_out, _grad_lse, _grad_gate, _grad_phi):
        # lse / gate / phi are saved statistics, not differentiable results.
        saved = ctx.saved_tensors
        x, q, vphi, tw, out, lse, gate, phi = saved
        scale, time_dim, contrastive, detach_gate_inputs = ctx.args
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        with torch.no_grad():  # the operator is not differentiable; see _guard_double_backward
            grad_x, grad_q, grad_vphi, grad_tw = ops.apm_bwd(
                grad_out, x, q, vphi, tw, out, lse, gate, phi, scale, time_dim, contrastive, detach_gate_inputs
            )
        grads = (grad_x, grad_q, grad_vphi, grad_tw) if contrastive else (grad_x, grad_q, None, None)
        grads = _guard_double_backward(backend, grads, (grad_out, *saved))
        return (*grads, None, None, None, None)

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)

    @register_flop_formula(ops.apm_fwd)
    def _forward_flops(x_shape, q_shape, vphi_shape, tw_shape, scale, time_dim, contrastive, *args,
                       out_shape=None, **kwargs) -> int:
        B, C, T, H, W = x_shape
        return core_forward_flops(B, C, T, H * W, q_shape[-1], time_dim, contrastive)

    @register_flop_formula(ops.apm_bwd)
    def _backward_flops(grad_shape, x_shape, q_shape, vphi_shape, tw_shape, out_shape_, lse_shape, gate_shape,
                        phi_shape, scale, time_dim, contrastive, detach_gate_inputs, *args, out_shape=None,
                        **kwargs) -> int:
        B, C, T, H, W = x_shape
        return core_backward_flops(B, C, T, H * W, q_shape[-1], time_dim, contrastive, detach_gate_inputs)
