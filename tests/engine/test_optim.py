"""The optimiser runs torch's fused step where it can, and that step is the same update rule as
torch's default loop over parameters."""
import copy

import pytest
import torch

from reid.engine.optim import build_optimizer, fused_kernels_apply


def params_and_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 3, 1, 3, 3), (5,), (11, 13)]  # odd shapes, a conv weight among them
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(5)]
    return params, grads


def run(opt, params, grads):
    for step in grads:
        for p, gr in zip(params, step):
            p.grad = gr.clone()
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_step_on_cpu_equals_the_default_loop(name):
    fused_params, grads = params_and_grads()
    fused = build_optimizer(fused_params, name, lr=0.01, weight_decay=5e-4)
    assert fused.defaults["fused"] is True
    loop_params, _ = params_and_grads()
    cls = type(fused)
    kwargs = dict(lr=0.01, weight_decay=5e-4, foreach=False)
    if name == "sgd":
        kwargs.update(momentum=0.9, nesterov=True)
    loop = cls(loop_params, **kwargs)
    for a, b in zip(run(fused, fused_params, grads), run(loop, loop_params, grads)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_only_where_its_kernels_apply():
    assert fused_kernels_apply([torch.nn.Parameter(torch.zeros(2))])
    assert not fused_kernels_apply([torch.zeros(2, dtype=torch.long)])  # not floating point
    frozen_only = build_optimizer([torch.nn.Parameter(torch.zeros(2), requires_grad=False),
                                   torch.nn.Parameter(torch.zeros(3))], "adam", 3e-4, 0.0)
    assert [p.shape for p in frozen_only.param_groups[0]["params"]] == [torch.Size([3])]


def test_resuming_keeps_this_machines_fused_step():
    # a checkpoint written by the default loop (as before fused steps) resumes into a fused optimiser
    # that stays fused and continues exactly where the loop would have
    from reid.engine.optim import load_optimizer_state

    params, grads = params_and_grads()
    loop = torch.optim.Adam(params, lr=0.01, foreach=False)
    run(loop, params, grads[:2])
    saved, weights = copy.deepcopy(loop.state_dict()), [p.detach().clone() for p in params]
    expected = run(loop, params, grads[2:])

    resumed = [torch.nn.Parameter(w.clone()) for w in weights]
    fused = build_optimizer(resumed, "adam", lr=0.01, weight_decay=0.0)
    load_optimizer_state(fused, saved)
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["foreach"] is None
    for a, b in zip(run(fused, resumed, grads[2:]), expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
