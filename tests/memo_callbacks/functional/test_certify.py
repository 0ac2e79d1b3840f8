"""certify: soundness against brute force, exactness on one affine layer, CROWN vs IBP, the LASS screen changing no
flag on trained digits models, the callback's certified counts (one and two processes), unsupported networks, errors."""

import itertools
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from datamodules import NoisyDigits
from helpers import run_ddp_script
from memo_callbacks import CriticalSampleRatio, LASSConfig
from memo_callbacks.functional import lass, pixels_to_input_units
from memo_callbacks.functional.certify import METHODS, bound_layers, certify
from models import CNNClassifier, MLPClassifier


def randomise_batchnorm(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.5 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return net.eval()


def tiny_nets():
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5),
        nn.Sequential(nn.Linear(12, 10), nn.ReLU()), nn.Linear(10, 4),
    )
    cnn = nn.Sequential(
        nn.ZeroPad2d((-1, -1, -1, -1)), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(4, 5, 3, padding="same"), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3),
    )
    pool = nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.MaxPool2d(2, stride=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    return {
        "mlp": (randomise_batchnorm(mlp, 1), (1, 2, 3)),
        "cnn": (randomise_batchnorm(cnn, 2), (2, 6, 6)),
        "maxpool": (pool.eval(), (2, 4, 4)),
    }


def true_min_margin(net: nn.Module, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, pred: torch.Tensor, n: int, seed: int):
    """min over ``n`` random points and ``n`` random vertices of each box (plus the clean point) of f_c - f_j, in float64."""
    g = torch.Generator().manual_seed(seed)
    net64 = _double(net)
    b = x.shape[0]
    u = torch.rand(b, n, *x.shape[1:], generator=g, dtype=torch.float64)
    vert = torch.randint(0, 2, (b, n, *x.shape[1:]), generator=g).double()
    lo, hi = lo.double().unsqueeze(1), hi.double().unsqueeze(1)
    pts = torch.cat([lo + u * (hi - lo), lo + vert * (hi - lo), x.double().unsqueeze(1)], 1)  # [B, 2n + 1, ...]
    with torch.no_grad():
        logits = net64(pts.flatten(0, 1)).reshape(b, pts.shape[1], -1)
    margin = logits.gather(2, pred[:, None, None].expand(b, pts.shape[1], 1)) - logits
    margin = margin.masked_fill(F.one_hot(pred, logits.shape[2]).bool()[:, None, :], math.inf)
    return margin.amin((1, 2))


def _double(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).double().eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "maxpool"])
@pytest.mark.parametrize("clipped", [False, True], ids=["box", "clip"])
def test_bounds_never_exceed_the_brute_force_minimum(name, method, clipped):
    net, shape = tiny_nets()[name]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, *shape, generator=g)
    radius = (0.05 + 0.25 * torch.rand(shape[0], generator=g)).reshape(-1, *[1] * (len(shape) - 1))
    clip = (-0.5, 0.8) if clipped else None
    res = certify(net, x, radius=radius, method=method, exhaustive=True, clip=clip)
    lo, hi = x - radius, x + radius
    if clipped:
        lo, hi = torch.maximum(lo, torch.clamp(x, max=-0.5)), torch.minimum(hi, torch.clamp(x, min=0.8))
    truth = true_min_margin(net, x, lo, hi, res.predicted, 1500, seed=4)
    assert torch.isfinite(res.margin).all()
    assert (res.margin <= truth).all(), (res.margin - truth).max()
    with torch.no_grad():
        assert torch.equal(res.predicted, net(x).argmax(1))
    assert torch.equal(res.certified, res.margin > 0)


def test_one_affine_layer_gets_its_exact_interval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 4)).eval()
    x = torch.randn(30, 5)
    radius = torch.tensor([0.1, 0.0, 0.3, 0.05, 0.2])
    w, b = net[1].weight.double(), net[1].bias.double()
    pred = net(x).argmax(1)
    diff = w[pred].unsqueeze(1) - w.unsqueeze(0)  # [N, K, D]: the weights of f_c - f_j
    exact = (diff @ x.double().unsqueeze(2)).squeeze(2) - diff.abs() @ radius.double() + (b[pred, None] - b)
    exact = exact.masked_fill(F.one_hot(pred, 4).bool(), math.inf).amin(1)
    # the attained minimum: the vertex x - r * sign(diff) of the minimising j, computed in float64
    for method in METHODS:
        res = certify(net, x, radius=radius, method=method)
        assert (res.margin <= exact).all()
        assert torch.allclose(res.margin, exact, atol=1e-5, rtol=0)  # up to the rounding allowance (~1e-6 here)


def test_crown_is_at_least_as_tight_as_ibp_and_tighter_on_average():
    net, shape = tiny_nets()["cnn"]
    x = torch.randn(40, *shape, generator=torch.Generator().manual_seed(5))
    bounds = {m: certify(net, x, radius=0.1, method=m, exhaustive=True).margin for m in METHODS}
    assert (bounds["crown-ibp"] >= bounds["ibp"]).all()
    assert (bounds["crown"] >= bounds["crown-ibp"]).all()
    assert (bounds["crown-ibp"] > bounds["ibp"] + 1e-3).float().mean() > 0.9  # CROWN's own bound wins: not just IBP's
    assert (bounds["crown"] > bounds["crown-ibp"] + 1e-4).float().mean() > 0.5  # tighter hidden boxes help


def test_radius_zero_certifies_every_clear_prediction_and_a_huge_radius_none():
    net, shape = tiny_nets()["mlp"]
    x = torch.randn(50, *shape, generator=torch.Generator().manual_seed(6))
    assert certify(net, x, radius=0.0).certified.all()
    assert not certify(net, x, radius=1e3).certified.any()


def test_a_tie_is_never_certified():
    net = nn.Sequential(nn.Linear(2, 2, bias=False)).eval()
    net[0].weight.data = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # two equal logits: argmax may go either way
    assert not certify(net, torch.randn(4, 2), radius=0.0).certified.any()


# ---------------------------------------------------------------------------------------------- trained models
def digits():
    dm = NoisyDigits(batch_size=256)
    dm.setup("fit")
    return dm


def train(network: nn.Module, dm, steps: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(network.parameters(), lr=0.01)
    network.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(network(dm.train_x), dm.train_y).backward()
        opt.step()
    return network.eval()


def near_the_boundary(model: nn.Module, x: torch.Tensor, pairs: int, seed: int) -> torch.Tensor:
    """Points bisected onto the decision boundary between two differently classified inputs, just on one side."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pred = model(x).argmax(1)
        out = []
        while len(out) < pairs:
            i, j = torch.randint(0, len(x), (2,), generator=g).tolist()
            if pred[i] == pred[j]:
                continue
            a, b = 0.0, 1.0  # f(x_i + t (x_j - x_i)) predicts pred[i] at a, not at b
            for _ in range(30):
                t = (a + b) / 2
                same = model((x[i] + t * (x[j] - x[i]))[None]).argmax(1).item() == pred[i].item()
                a, b = (t, b) if same else (a, t)
            out.append(x[i] + a * (x[j] - x[i]))
    return torch.stack(out)


def mlp_model(dm):
    model = MLPClassifier((1, 8, 8), 10, hidden=(32, 32), dropout=0.2, input_noise_std=0.1)
    train(model.network, dm, 100)
    return model.eval()


def cnn_model(dm):
    model = CNNClassifier((1, 8, 8), 10, width=0.05, crop=1, dropout=0.3, input_noise_std=0.1)
    train(model.network, dm, 60)
    return model.eval()


@pytest.mark.parametrize("build, radius", [(mlp_model, 0.1), (cnn_model, 0.03)], ids=["mlp", "cnn"])
def test_screen_changes_no_critical_flag_on_trained_digits_models(build, radius):
    dm = digits()
    model = build(dm)
    x = torch.cat([dm.val_x[:160], near_the_boundary(model, dm.val_x, 16, seed=1)])
    kw = dict(radius=radius, step_size=radius / 4, noise_std=radius / 10, max_iter=25, seed=7, batch_size=64)
    plain = lass(model, x, **kw)
    screened = lass(model, x, certify=True, return_adversarial=True, **kw)
    cert = screened.certified
    assert plain.certified is None
    assert 0.1 < cert.float().mean() < 0.95  # the screen decides some, LASS the rest
    assert 0 < plain.critical.sum() < len(x)
    assert not cert[-16:].any()  # the near-boundary points are never certified
    assert plain.critical[-16:].float().mean() > 0.5
    assert torch.equal(plain.critical, screened.critical)
    assert not (cert & plain.critical).any()
    assert torch.equal(plain.iterations[~cert], screened.iterations[~cert])
    assert (screened.iterations[cert] == 0).all()
    assert torch.equal(plain.predicted, screened.predicted)
    assert torch.equal(screened.adversarial[cert], x[cert])
    with torch.no_grad():  # a certified flag is a proof: brute force never finds a flip in those boxes
        r = torch.as_tensor(radius)
        truth = true_min_margin(model.network, x[cert], x[cert] - r, x[cert] + r, plain.predicted[cert], 200, seed=2)
    assert (truth > 0).all()


def test_models_expose_their_evaluation_network():
    torch.manual_seed(0)
    model = CNNClassifier((1, 8, 8), 10, width=0.05, crop=2, dropout=0.5, input_noise_std=0.3, hidden_noise_std=0.1)
    randomise_batchnorm(model.network, 0)
    model.train()  # certify evaluates in eval mode and restores the mode
    x = torch.randn(5, 1, 8, 8)
    ops = bound_layers(model, (1, 8, 8))
    out = x.double()
    for op in ops:
        out = op.forward(out)
    model.eval()
    assert torch.allclose(out, model(x).double(), atol=1e-5)
    model.train()
    certify(model, x, radius=0.01)
    assert model.training and model.network.training

    class Tweaked(MLPClassifier):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(NotImplementedError, match="overrides `forward`: it must override `as_bound_module`"):
        certify(Tweaked(64, 10, hidden=(8,)), x, radius=0.01)


class Lying(nn.Module):
    """Claims a network it does not run."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.net(x) + 1.0 * torch.tensor([0.0, 1.0, 0.0])

    def as_bound_module(self):
        return self.net


def test_unsupported_or_mismatched_networks_fall_back_to_plain_lass():
    x = torch.randn(12, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    with pytest.raises(NotImplementedError, match="no bounds for Tanh"):
        certify(tanh, x, radius=0.1)
    with pytest.raises(NotImplementedError, match="does not reproduce the model's logits"):
        certify(Lying(), x, radius=0.1)
    with pytest.raises(NotImplementedError, match=r"must be an nn.Sequential .*or have an `as_bound_module\(\)`"):
        certify(nn.Linear(4, 3), x.flatten(1), radius=0.1)
    kw = dict(radius=0.5, step_size=0.1, noise_std=0.05, max_iter=10)
    for net in (tanh, Lying()):
        plain = lass(net, x, **kw)
        with pytest.warns(UserWarning, match="no certify screen"):
            screened = lass(net, x, certify="crown", **kw)
        assert screened.certified is None
        assert torch.equal(plain.critical, screened.critical) and torch.equal(plain.iterations, screened.iterations)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="alpha-crown"), ValueError, r"`method` must be one of \('ibp', 'crown-ibp', 'crown'\), got 'alpha-crown'"),
        (dict(crown_neurons=-1), ValueError, r"`crown_neurons` must be an int >= 0, got -1"),
        (dict(crown_neurons=1.5), TypeError, r"`crown_neurons` must be an int >= 0, got 1.5"),
        (dict(exhaustive="yes"), TypeError, r"`exhaustive` must be a bool, got 'yes'"),
        (dict(batch_size=0), ValueError, r"`batch_size` must be an int >= 1 or None, got 0"),
        (dict(radius=-0.1), ValueError, r"`radius` must be >= 0, got \[-0.1"),
        (dict(radius=float("nan")), ValueError, r"`radius` must be finite"),
        (dict(radius=torch.ones(3)), ValueError, r"`radius` must be broadcastable to one sample's shape \(4,\), got \(3,\)"),
        (dict(clip=(0.0,)), ValueError, r"`clip` must be a \(low, high\) pair or None"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    net = nn.Sequential(nn.Linear(4, 3))
    kwargs = {"radius": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        certify(net, torch.zeros(2, 4), **kwargs)


def test_lass_rejects_a_bad_certify_argument():
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"`certify` must be a bool or one of 'ibp', 'crown-ibp', 'crown', got 'yes'"):
        lass(net, torch.zeros(2, 4), radius=0.1, step_size=0.1, noise_std=0.0, certify="yes")
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match=r"`certify` must be True, False or 'auto', got"):
            CriticalSampleRatio(certify=bad)


def test_auto_screen_is_skipped_after_it_certifies_little_and_retried(tmp_path):
    """certify="auto": a screened measurement that certifies < 10% of the split turns the screen off for the next
    4 measurements, then it is tried again; the CSR values are those of plain LASS throughout."""
    import pytorch_lightning as pl

    from datamodules import NoisyDigits
    from models import MLPClassifier

    def run(certify):
        pl.seed_everything(0, verbose=False)
        dm = NoisyDigits(subset=200, batch_size=50, seed=0)
        csr = CriticalSampleRatio(num_samples=30, certify=certify, lass=LASSConfig(radius=30.0, max_iter=3))
        trainer = pl.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                             default_root_dir=tmp_path, callbacks=[csr])
        trainer.fit(MLPClassifier((1, 8, 8), 10, hidden=(16,), lr=0.1), dm)
        return csr

    auto, plain = run("auto"), run(False)
    # r = 30 pixel units: the box is far too wide to certify anything
    assert ["csr/val_certified" in e for e in auto.history] == [True, False, False, False, False, True]
    assert all(e["csr/val_certified"] == 0.0 for e in auto.history if "csr/val_certified" in e)
    assert [e["csr/val"] for e in auto.history] == [e["csr/val"] for e in plain.history]
    assert auto.state_dict()["screen_skip"] == {"val": 4}


# ------------------------------------------------------------------------------------------------- the callback
DDP_SCRIPT = """
import torch, pytorch_lightning as pl
from torch import nn
from datamodules import NoisyDigits
from memo_callbacks import CriticalSampleRatio, LASSConfig

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    def forward(self, x):
        return self.net(x)
    def as_bound_module(self):
        return self.net
    def validation_step(self, batch, _):
        pass

lass = LASSConfig(radius=3.0, step_size=1.0, noise_std=0.3, max_iter=20, seed=3)
csr = CriticalSampleRatio(num_samples=101, lass=lass, train=True, num_train_samples=77, certify=CERTIFY)
trainer = pl.Trainer(strategy="ddp" if DEVICES > 1 else "auto", accelerator="cpu", devices=DEVICES, logger=False,
                     callbacks=[csr], enable_progress_bar=False, enable_model_summary=False)
dm = NoisyDigits(batch_size=64)
dm.setup("fit")
trainer.validate(Net(), dm)
if OUT is not None:
    torch.save(csr.history, f"{OUT}/history{trainer.global_rank}.pt")
"""


def untimed(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not k.endswith("seconds")}  # wall-clock times differ between runs


def test_callback_logs_the_certified_share_exactly_on_one_and_two_processes(tmp_path: Path):
    run_ddp_script(DDP_SCRIPT.replace("CERTIFY", "True"), tmp_path)
    h0, h1 = ([untimed(e) for e in torch.load(tmp_path / f"history{r}.pt")] for r in (0, 1))
    assert h0 == h1
    runs = {}
    for certify_ in (True, False):
        scope: dict = {"OUT": None, "DEVICES": 1}
        exec(compile(DDP_SCRIPT.replace("CERTIFY", str(certify_)), "one_process", "exec"), scope)
        runs[certify_] = untimed(scope["csr"].history[-1])
    one, plain = runs[True], runs[False]
    assert h0[-1] == one
    for split, n in (("val", 101), ("train", 77)):
        share = one[f"csr/{split}_certified"]
        assert 0 < share < 1 and round(share * n) == pytest.approx(share * n)  # a count over n, summed exactly
        assert one[f"csr/{split}"] == plain[f"csr/{split}"]  # the screen changes no ratio
        assert one[f"csr/{split}"] + share <= 1
        assert f"csr/{split}_certified" not in plain
    scope: dict = {"OUT": None, "DEVICES": 1}  # the share against certify() run by hand on the same subset
    exec(compile(DDP_SCRIPT.split("lass = ")[0], "net", "exec"), scope)
    dm = digits()
    ids = torch.randperm(len(dm.val_x), generator=torch.Generator().manual_seed(3))[:101].sort().values
    r = pixels_to_input_units(3.0, dm.std, dm.pixel_scale)
    assert certify(scope["Net"](), dm.val_x[ids], radius=r).certified.sum() == round(one["csr/val_certified"] * 101)
