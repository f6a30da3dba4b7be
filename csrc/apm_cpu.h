// Fused CPU kernels of the APM core (the HW x HW part of the Appearance-Preserving Module).
//
// The operator contract is the same for every backend (ap3d_kernels/backends/__init__.py has the
// full text): the cheap 1x1x1 projections and the L2 normalisation run in PyTorch with autograd;
// these kernels take their results and compute, per (centre t, neighbour t') pair,
//   P = softmax(scale * q_t q_t'^T),  y = P x_t',  phi = P vphi_t',
//   a = sigmoid(sum_k tw_t * phi),    z = a * y   (a = 1 when contrastive is false),
// written straight into the interleaved output with the centre copy.
//
//   x     [B, C, T, H, W]        features (any floating dtype)
//   q     [B, T, HW, Ck]         L2-normalised semantic maps (query and key), accumulation dtype
//   vphi  [B, T, HW, Ck]         x' W_phi^T                               (None if not contrastive)
//   tw    [B, T, HW, Ck]         (x' W_theta^T) * w                       (None if not contrastive)
//   out   [B, C, N*T, H, W]      [z(t-N//2) .. z(t-1), x_t, z(t+1) .. z(t+N//2)] for each t
//   lse   [B, T, N-1, HW]        log-sum-exp of each row's scaled similarities
//   gate  [B, T, N-1, HW]        a                                          (empty if not contrastive)
//   phi   [B, T, N-1, HW, Ck]    P vphi                                     (empty if not contrastive)
// x, out and grad_out are read and written in place when NCDHW-contiguous or channels_last_3d
// (other strides are made contiguous first); out and grad_x take x's memory format. For 16-bit
// x the kernels convert single frames to float32 per thread, never the whole tensor.
// The accumulation dtype is float64 for float64 x, float32 otherwise. Rows whose neighbour is
// temporal zero padding hold what the reference computes for them: lse = log(HW), gate = 0.5,
// phi = 0 (and a zero reconstruction).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace ap3d {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apm_forward_cpu(
    const at::Tensor& x, const at::Tensor& q, const std::optional<at::Tensor>& vphi,
    const std::optional<at::Tensor>& tw, double scale, int64_t time_dim, bool contrastive,
    bool detach_gate_inputs);

// Gradients (grad_x, grad_q, grad_vphi, grad_tw) of sum(out * grad_out); grad_vphi and grad_tw
// are empty when contrastive is false. With detach_gate_inputs the gate's phi = P vphi sends no
// gradient into P (the gate sees a detached reconstruction), only into vphi.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& q, const std::optional<at::Tensor>& vphi,
    const std::optional<at::Tensor>& tw, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& gate,
    const at::Tensor& phi, double scale, int64_t time_dim, bool contrastive, bool detach_gate_inputs);

// Which instruction set the element-wise loops dispatched to on this CPU (for diagnostics).
std::string apm_cpu_isa();

}  // namespace ap3d
