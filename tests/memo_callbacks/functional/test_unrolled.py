"""Unrolled loss sensitivity against finite differences of an independent SGD replay (float64)."""

import pytest
import torch
from torch import nn

from memo_callbacks.functional import SGDRule, SGDWindowRecorder, unrolled_sensitivity

N, SHAPE, C = 7, (1, 2, 2), 3


def tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, C)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    x = torch.randn(N, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    # Drawn with replacement: examples repeat within and across steps.
    steps = [torch.randint(0, N, (3,), generator=g) for _ in range(6)]
    return model, x, y, steps


def reference_losses(model, params, x, y, steps, lrs, rule, t, bufs=None, per_class=False):
    """Plain-loop SGD replay (torch.optim semantics written out) then L_t with batch t's *unperturbed* inputs."""
    names = list(params)
    p = {k: v.clone() for k, v in params.items()}
    b = None if bufs is None else {k: v.clone() for k, v in bufs.items()}
    for s in range(t):
        out = torch.func.functional_call(model, p, (x[steps[s]],))
        loss = nn.functional.cross_entropy(out, y[steps[s]])
        grads = dict(zip(names, torch.autograd.grad(loss, [p[k] for k in names])))
        new_p, new_b = {}, {}
        for k in names:
            d = grads[k] + rule.weight_decay * p[k]
            if rule.momentum:
                buf = d.clone() if b is None else rule.momentum * b[k] + (1 - rule.dampening) * d
                new_b[k] = buf
                d = d + rule.momentum * buf if rule.nesterov else buf
            new_p[k] = (p[k] - lrs[s] * d).detach().requires_grad_()
        p, b = new_p, (new_b if rule.momentum else None)
    return p


def fd_gradients(model, params, x, y, steps, lrs, rule, t, bufs=None, eps=1e-6, classes=False):
    """dL_t/dx (or dL_t(y=i)/dx for every class i) for every example by central differences: [(C,) N, D]."""
    x_t, y_t = x[steps[t]].clone(), y[steps[t]]

    def loss_t(x_pert):
        p = reference_losses(model, params, x_pert, y, steps, lrs, rule, t, bufs)
        with torch.no_grad():
            losses = nn.functional.cross_entropy(torch.func.functional_call(model, p, (x_t,)), y_t, reduction="none")
        if classes:
            return torch.stack([(losses * (y_t == i)).sum() / len(y_t) for i in range(C)])
        return losses.mean().unsqueeze(0)

    out = torch.zeros(C if classes else 1, N, x[0].numel(), dtype=torch.float64)
    for i in range(N):
        for j in range(x[0].numel()):
            xp, xm = x.clone(), x.clone()
            xp[i].view(-1)[j] += eps
            xm[i].view(-1)[j] -= eps
            out[:, i, j] = (loss_t(xp) - loss_t(xm)) / (2 * eps)
    return out


def start_params(model):
    return {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}


@pytest.mark.parametrize(
    "rule",
    [SGDRule(), SGDRule(momentum=0.9, weight_decay=0.01), SGDRule(momentum=0.5, nesterov=True),
     SGDRule(momentum=0.7, dampening=0.3)],
    ids=["plain", "momentum_wd", "nesterov", "dampening"],
)
def test_unrolled_matches_finite_differences(rule):
    model, x, y, steps = tiny_problem()
    params = start_params(model)
    lrs = [0.3, 0.2, 0.25, 0.1, 0.3, 0.2]
    measure = [2, 3]  # example 5 is drawn only at steps 3 and 4, at or after the last measured step
    out = unrolled_sensitivity(
        model, params, x, y, steps, lr=lrs, momentum=rule.momentum, dampening=rule.dampening,
        nesterov=rule.nesterov, weight_decay=rule.weight_decay, measure_steps=measure,
        per_class=True, num_classes=C,
    )
    class_sums = torch.zeros(C, C, dtype=torch.float64)
    for row, t in enumerate(measure):
        fd = fd_gradients(model, params, x, y, steps, lrs, rule, t, classes=True)  # [C, N, D]
        expected = fd.sum(0).abs().sum(-1)  # L1 of dL_t/dx, [N]
        torch.testing.assert_close(out.per_step[row], expected, rtol=1e-6, atol=1e-9)
        norms = fd.abs().sum(-1)  # [C, N]
        for j in range(C):
            class_sums[:, j] += norms[:, y == j].sum(1)
        # x acts only through earlier steps: an example first drawn at step >= t has no sensitivity at t.
        earlier = torch.cat(steps[:t]).unique()
        later = torch.tensor([i for i in range(N) if i not in earlier.tolist()], dtype=torch.long)
        if later.numel():
            assert torch.all(out.per_step[row, later] == 0)
    torch.testing.assert_close(out.class_sums, class_sums, rtol=1e-6, atol=1e-9)
    # The denominators: examples of class j drawn before the last measured step (their sensitivity can be nonzero);
    # one drawn only at or after it is identically 0 and must not dilute the mean.
    influential = torch.tensor([i for i in range(N) if any(i in steps[s].tolist() for s in range(max(measure)))])
    sizes = torch.bincount(y[influential], minlength=C).double()
    all_drawn = torch.bincount(y[torch.cat(steps).unique()], minlength=C).double()
    assert not torch.equal(sizes, all_drawn)  # the problem draws examples after the last measured step
    torch.testing.assert_close(out.class_sizes.double(), sizes)
    torch.testing.assert_close(out.class_matrix, class_sums / (len(measure) * sizes.clamp_min(1)))
    torch.testing.assert_close(out.g_bar, out.per_step.mean(0))


def test_initialised_momentum_buffers_and_norms():
    model, x, y, steps = tiny_problem(1)
    params = start_params(model)
    g = torch.Generator().manual_seed(3)
    bufs = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.1 for k, v in params.items()}
    rule = SGDRule(momentum=0.9)
    lrs = [0.2] * 6
    fd = fd_gradients(model, params, x, y, steps, lrs, rule, 4, bufs=bufs)[0]  # [N, D]
    for norm, expected in (("l1", fd.abs().sum(-1)), ("l2", fd.norm(dim=-1)), ("linf", fd.abs().amax(-1))):
        out = unrolled_sensitivity(model, params, x, y, steps, lr=0.2, momentum=0.9, momentum_buffers=bufs,
                                   measure_steps=[4], norm=norm)
        torch.testing.assert_close(out.per_step[0], expected, rtol=1e-6, atol=1e-9)


def test_chunking_gives_the_same_result():
    model, x, y, steps = tiny_problem(2)
    params = start_params(model)
    kw = dict(lr=0.3, momentum=0.9, measure_steps=[1, 2, 3, 4, 5], per_class=True, num_classes=C)
    whole = unrolled_sensitivity(model, params, x, y, steps, **kw)
    tiny = unrolled_sensitivity(model, params, x, y, steps, max_buffer_bytes=1, **kw)  # one step per chunk
    torch.testing.assert_close(whole.per_step, tiny.per_step)
    torch.testing.assert_close(whole.class_sums, tiny.class_sums)


def test_recorder_reproduces_a_real_training_window():
    """Record a window of real torch.optim.SGD training; the replay's final parameters drive the same numbers."""
    model, x, y, steps = tiny_problem(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    rec = SGDWindowRecorder(model, opt)
    for s, b in enumerate(steps):
        if s == 2:
            rec.start()  # momentum buffers exist by now
        if rec.started:
            rec.record(b)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[b]), y[b]).backward()
        opt.step()
        sched.step()
    w = rec.window
    assert w.num_steps == 4 and w.momentum_buffers is not None and w.lrs == [0.1, 0.1, 0.05, 0.05]
    params = {k: v.requires_grad_() for k, v in w.params.items()}
    final = reference_losses(model, params, x, y, w.batch_indices, w.lrs, w.rule, 4, bufs=w.momentum_buffers)
    for k, v in model.named_parameters():
        torch.testing.assert_close(final[k], v.detach())
    out = unrolled_sensitivity(model, w.params, x, y, w.batch_indices, lr=w.lrs, momentum=0.9, nesterov=True,
                               weight_decay=1e-3, momentum_buffers=w.momentum_buffers, measure_steps=[3])
    fd = fd_gradients(model, params, x, y, w.batch_indices, w.lrs, w.rule, 3, bufs=w.momentum_buffers)[0]
    torch.testing.assert_close(out.per_step[0], fd.abs().sum(-1), rtol=1e-6, atol=1e-9)


def test_errors():
    model, x, y, steps = tiny_problem()
    params = start_params(model)
    with pytest.raises(TypeError, match="`optimizer` must be torch.optim.SGD.*got Adam"):
        SGDRule.from_optimizer(torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="maximize=False"):
        SGDRule.from_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, maximize=True))
    groups = [{"params": [model[1].weight], "momentum": 0.9}, {"params": [model[1].bias]}]
    with pytest.raises(ValueError, match="param groups must share"):
        SGDRule.from_optimizer(torch.optim.SGD(groups, lr=0.1))
    with pytest.raises(ValueError, match="`nesterov` needs momentum > 0"):
        SGDRule(nesterov=True)
    with pytest.raises(ValueError, match=r"`measure_steps` must be non-empty window positions in \[0, 6\)"):
        unrolled_sensitivity(model, params, x, y, steps, lr=0.1, measure_steps=[6])
    with pytest.raises(ValueError, match=r"`lr` must be a number or one value per step \(6\), got 2"):
        unrolled_sensitivity(model, params, x, y, steps, lr=[0.1, 0.2])
    with pytest.raises(ValueError, match="`batch_indices` must hold at least one step"):
        unrolled_sensitivity(model, params, x, y, [], lr=0.1)
    with pytest.raises(ValueError, match=r"`batch_indices\[0\]` must hold indices in \[0, 7\)"):
        unrolled_sensitivity(model, params, x, y, [torch.tensor([7])] + steps[1:], lr=0.1)
    with pytest.raises(ValueError, match="unknown names.*nope"):
        unrolled_sensitivity(model, {"nope": torch.zeros(1)}, x, y, steps, lr=0.1)
    with pytest.raises(ValueError, match="`num_classes` must exceed every target"):
        unrolled_sensitivity(model, params, x, y, steps, lr=0.1, per_class=True, num_classes=1)
    with pytest.raises(TypeError, match="`inputs` must be floating point"):
        unrolled_sensitivity(model, params, x.long(), y, steps, lr=0.1)
    with pytest.raises(ValueError, match="`norm` must be one of"):
        unrolled_sensitivity(model, params, x, y, steps, lr=0.1, norm="l3")
    with pytest.raises(RuntimeError, match="before start"):
        SGDWindowRecorder(model, torch.optim.SGD(model.parameters(), lr=0.1)).record(torch.tensor([0]))


def test_trajectory_recorder_windows_snapshots_and_errors():
    from memo_callbacks.functional import SGDTrajectoryRecorder

    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = SGDTrajectoryRecorder(model, opt)
    with pytest.raises(RuntimeError, match=r"record\(4\) called before any snapshot"):
        rec.record(4, torch.tensor([0]))
    before = {}
    for step in range(4, 10):
        if step in (4, 7):
            rec.snapshot(step)
            before[step] = {k: v.detach().clone() for k, v in model.named_parameters()}
        rec.record(step, torch.tensor([step, step + 1]))
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    w = rec.window(7, 10)
    assert [b.tolist() for b in w.batch_indices] == [[7, 8], [8, 9], [9, 10]] and w.lrs == [0.1] * 3
    assert all(torch.equal(w.params[k], before[7][k]) for k in before[7])  # the parameters before step 7
    assert w.momentum_buffers is not None and rec.window(4, 6).num_steps == 2
    with pytest.raises(KeyError, match=r"`start` must be a snapshot step, got 5; snapshots at \[4, 7\]"):
        rec.window(5, 8)
    with pytest.raises(RuntimeError, match=r"steps \[10, 11\] of the window \[7, 12\) were not recorded"):
        rec.window(7, 12)
    clone = SGDTrajectoryRecorder(model, opt)
    clone.load_state_dict(rec.state_dict())
    assert clone.snapshot_steps == [4, 7] and torch.equal(clone.window(4, 10).batch_indices[5], w.batch_indices[2])
    rec.drop_before(5)
    assert rec.snapshot_steps == [7] and sorted(rec.steps) == [7, 8, 9]
    rec.drop_before(8)
    assert not rec.started and not rec.steps
