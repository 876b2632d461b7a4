"""The expansion interface every remflow model implements (paper §3; DESIGN §4)."""

from __future__ import annotations

import pytest
import torch

from remflow.losses import gradient_ascent, npo, per_sample_ce
from remflow.models import SHARED_ID, Route, build_model, count_params, shape_signature
from remflow.models.layers import channel_keep
from remflow.params import CnnCfg, ResNet9Cfg, ViTCfg

MODELS = [
    (CnnCfg(name="cnn", width=8), 1, 8),
    (CnnCfg(name="cnn", width=8), 1, 28),
    (ResNet9Cfg(name="resnet9", width=8), 3, 32),
    (ViTCfg(name="vit", patch=8, dim=32, depth=2, heads=2, dim_head=8, mlp_dim=48), 3, 32),
]


def _model(cfg, c, size, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, c, 10, size)


@pytest.mark.parametrize("cfg,c,size", MODELS, ids=["cnn8", "cnn28", "resnet9", "vit"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_base_mode_of_the_widened_model_is_the_original_exactly(cfg, c, size, mode):
    model = _model(cfg, c, size)
    x = torch.randn(6, c, size, size)
    original = _model(cfg, c, size)
    getattr(original, mode)()
    before = original(x)
    model.widen_(model.added_for_ratio(1.0), seed=5)
    getattr(model, mode)()
    assert torch.equal(model(x), before)  # bit for bit, not approximately
    full = model(x, Route.for_batch(torch.arange(6), None, keep=0.2, seed=0))
    assert not torch.allclose(full, before)  # random new->old weights: the full model differs


@pytest.mark.parametrize("cfg,c,size", MODELS, ids=["cnn8", "cnn28", "resnet9", "vit"])
def test_deployed_model_has_the_original_architecture(cfg, c, size):
    model = _model(cfg, c, size)
    sig, n = shape_signature(model), count_params(model)
    model.widen_(model.added_for_ratio(1.0), seed=1)
    assert count_params(model) > n
    assert set(model.state_dict()) == set(sig)  # same keys while widened, larger shapes
    model.deploy_()
    assert shape_signature(model) == sig and count_params(model) == n and not model.widened
    assert list(model.state_dict()) == list(sig)


def test_zero_cross_init_starts_the_full_model_at_the_base_model():
    cfg, c, size = MODELS[2]
    model = _model(cfg, c, size).eval()
    x = torch.randn(4, c, size, size)
    before = model(x)
    model.widen_(model.added_for_ratio(1.0), seed=2, cross="zero")
    assert torch.allclose(model(x, Route(torch.arange(4), keep=0.2, seed=0)), before, atol=1e-5)


def test_base_mode_gives_no_gradient_to_added_channels():
    cfg, c, size = MODELS[0]
    model = _model(cfg, c, size)
    model.widen_(model.added_for_ratio(1.0), seed=1)
    model(torch.randn(4, c, size, size)).sum().backward()
    w = model.conv2.conv.weight
    o, i = model.conv2.conv.base_out, model.conv2.conv.base_in
    assert w.grad[o:].abs().sum() == 0 and w.grad[:, i:].abs().sum() == 0 and w.grad[:o, :i].abs().sum() > 0


def test_masks_are_a_pure_function_of_the_sample_index():
    ids = torch.arange(2000)
    a = channel_keep(ids, 64, keep=0.2, seed=7, group="c2")
    b = channel_keep(ids.flip(0), 64, keep=0.2, seed=7, group="c2").flip(0)
    assert torch.equal(a, b)  # same index, same mask, wherever it sits in the batch
    assert len({tuple(row.tolist()) for row in a}) == 2000  # different indices, different masks
    assert abs(a.float().mean().item() - 0.2) < 0.01  # keep probability
    assert not torch.equal(a, channel_keep(ids, 64, keep=0.2, seed=8, group="c2"))
    assert not torch.equal(a, channel_keep(ids, 64, keep=0.2, seed=7, group="c3"))


def test_discovered_samples_share_one_mask():
    idx = torch.tensor([3, 17, 42, 99, 1000])
    forget = torch.tensor([True, False, True, True, False])
    route = Route.for_batch(idx, forget, keep=0.2, seed=0)
    m = route.mask("c1", 4, 32, torch.float32)
    assert torch.equal(m[0], m[2]) and torch.equal(m[0], m[3])
    assert not torch.equal(m[0], m[1]) and not torch.equal(m[1], m[4])
    assert torch.all(m[:, :4] == 1)  # deployed channels are never masked
    shared = Route(torch.tensor([SHARED_ID]), keep=0.2, seed=0).mask("c1", 4, 32, torch.float32)
    assert torch.equal(m[0], shared[0])
    assert route.mask("c1", 4, 32, torch.float32) is m  # built once per batch and group


def test_paper_parameter_counts():
    half = build_model(ResNet9Cfg(name="resnet9", width=32), 3, 10, 32)
    full = build_model(ResNet9Cfg(name="resnet9", width=64), 3, 10, 32)
    assert count_params(half) == 570_816 and count_params(full) == 2_276_224
    half.widen_(half.added_for_ratio(1.0))
    assert count_params(half) == count_params(full)  # expansion ratio 1 = the full-width network


def test_npo_gradient_equals_gradient_ascent_at_the_reference():
    torch.manual_seed(0)
    model = build_model(CnnCfg(name="cnn", width=4), 1, 10, 8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    ref_ce = per_sample_ce(model(x), y).detach()

    def grads(loss_fn):
        model.zero_grad()
        loss_fn(per_sample_ce(model(x), y), ref_ce, 1.0).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    for g_npo, g_ga in zip(grads(npo), grads(gradient_ascent)):
        assert torch.allclose(g_npo, g_ga, atol=1e-6)
    # and NPO's weight shrinks once a sample is forgotten (bounded), unlike gradient ascent
    ce = torch.tensor([5.0], requires_grad=True)
    npo(ce, torch.tensor([0.1])).sum().backward()
    assert 0 < -ce.grad.item() < 0.02


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_remflows_optimisers_match_torch_optim(kind):
    from remflow.params import Recipe
    from remflow.train import make_optimizer

    torch.manual_seed(0)
    a = build_model(CnnCfg(name="cnn", width=4), 1, 10, 8)
    b = build_model(CnnCfg(name="cnn", width=4), 1, 10, 8)
    b.load_state_dict(a.state_dict())
    recipe = Recipe(optimizer=kind, lr=0.05 if kind == "sgd" else 1e-3, epochs=1, schedule="constant")
    ours = make_optimizer(a.parameters(), recipe)
    theirs = (torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) if kind == "sgd"
              else torch.optim.Adam(b.parameters(), lr=1e-3, weight_decay=5e-4))
    for step in range(5):
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        for model, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
