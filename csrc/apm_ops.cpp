// Operator registration: torch.ops.ap3d_cpu.apm_fwd / apm_bwd / apm_isa.
//
// Registered with TORCH_LIBRARY so that the same shared object works whether it is built by
// setup.py (imported as the Python module ap3d_kernels._C) or by CMake (loaded with
// torch.ops.load_library). The schemas are the APM core contract shared by every backend
// (ap3d_kernels/backends/__init__.py: FORWARD_SCHEMA / BACKWARD_SCHEMA, checked equal by the
// tests); fake kernels, autograd and FLOP formulas live in ap3d_kernels/backends/cpu.py.
#include <torch/library.h>

#include "apm_cpu.h"

TORCH_LIBRARY(ap3d_cpu, m) {
  // Where the fake (meta) kernels and the autograd formula are registered.
  m.set_python_module("ap3d_kernels.backends.cpu");
  m.def(
      "apm_fwd(Tensor x, Tensor q, Tensor? vphi, Tensor? tw, float scale, int time_dim, bool contrastive, "
      "bool detach_gate_inputs) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "apm_bwd(Tensor grad_out, Tensor x, Tensor q, Tensor? vphi, Tensor? tw, Tensor out, Tensor lse, Tensor gate, "
      "Tensor phi, float scale, int time_dim, bool contrastive, bool detach_gate_inputs) -> (Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def("apm_isa() -> str", &ap3d::apm_cpu_isa);
}

TORCH_LIBRARY_IMPL(ap3d_cpu, CPU, m) {
  m.impl("apm_fwd", &ap3d::apm_forward_cpu);
  m.impl("apm_bwd", &ap3d::apm_backward_cpu);
}

#ifdef AP3D_PYTHON_MODULE
// Built by setup.py as ap3d_kernels._C: an (empty) Python module whose import runs the
// registrations above. The CMake build omits it and needs no Python headers.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "AP3D fused CPU kernels; registers torch.ops.ap3d_cpu.*", -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
