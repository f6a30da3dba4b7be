// Fused CPU kernels of the Appearance-Preserving Module (APM).
//
// Layout conventions (all tensors standard-contiguous inside the kernels):
//   x       [B, C, T, H, W]          features (any floating dtype)
//   g/theta/phi [Ck, C], att [Ck]    1x1x1 conv weights, squeezed
//   out     [B, C, N*T, H, W]        interleaved [z(t-N//2) .. x_t .. z(t+N//2)] per t
//   lse     [B, T, N-1, HW]          log-sum-exp of the scaled similarities of each row
//   gate    [B, T, N-1, HW]          contrastive-attention value a = sigmoid(u) (empty if off)
//   phi_y   [B, T, N-1, HW, Ck]      phi(y) of the un-gated reconstruction (empty if off)
// lse, gate and phi_y are float32 (float64 for float64 inputs): they are what the backward
// needs besides x and out, and are O(HW) per pair, never O(HW^2).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace ap3d {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> apm_forward_cpu(
    const at::Tensor& x, const at::Tensor& g_weight, const std::optional<at::Tensor>& theta_weight,
    const std::optional<at::Tensor>& phi_weight, const std::optional<at::Tensor>& att_weight, double scale,
    int64_t time_dim, bool contrastive, bool detach_gate_inputs);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> apm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& g_weight,
    const std::optional<at::Tensor>& theta_weight, const std::optional<at::Tensor>& phi_weight,
    const std::optional<at::Tensor>& att_weight, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& gate, const at::Tensor& phi_y, double scale, int64_t time_dim, bool contrastive,
    bool detach_gate_inputs);

// Which instruction set the element-wise loops dispatched to on this CPU (for diagnostics).
std::string apm_cpu_isa();

}  // namespace ap3d
