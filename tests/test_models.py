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
    (CnnCfg(name="cnn", width=8, layout="every_conv"), 1, 8),
    (ResNet9Cfg(name="resnet9", width=8, layout="every_conv"), 3, 32),
]
IDS = ["cnn8", "cnn28", "resnet9", "vit", "cnn8-every", "resnet9-every"]


def _model(cfg, c, size, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, c, 10, size)


@pytest.mark.parametrize("cfg,c,size", MODELS, ids=IDS)
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


@pytest.mark.parametrize("cfg,c,size", MODELS, ids=IDS)
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
    assert not torch.equal(a, channel_keep(ids, 64, keep=0.2, seed=7, group="c3"))  # per-layer salting


def test_masks_are_nested_across_layers_by_default():
    """The released code seeds a sample's mask from its id alone: equal widths share it, widths nest."""
    ids = torch.tensor([0, 1, 5, 77, 1000, SHARED_ID])
    route = Route(ids, keep=0.2, seed=3)
    m64a, m64b = route.mask("c1", 32, 64, torch.float32), route.mask("c4", 32, 64, torch.float32)
    assert torch.equal(m64a, m64b)  # two layers of equal width: the same mask for each sample
    m128 = route.mask("c2", 64, 128, torch.float32)
    assert torch.equal(m128[:, 64 : 64 + 64], m64a[:, 32:])  # a narrower layer's mask is a prefix of a wider one's
    assert not torch.equal(m128[0], m128[1])  # still one mask per sample
    # D_f's overlap with a sample's path is then the same in every layer of one width
    a, b = route.mask("c3", 0, 64, torch.float32), route.mask("c1", 0, 64, torch.float32)
    assert torch.equal(a[3] * a[5], b[3] * b[5])
    # the old behaviour, as a switch: independent masks per layer
    salted = Route(ids, keep=0.2, seed=3, per_layer=True)
    assert not torch.equal(salted.mask("c1", 32, 64, torch.float32), salted.mask("c4", 32, 64, torch.float32))


def test_shared_mask_is_not_a_training_samples_mask():
    # the released code reuses sample 0's id for D_f's shared mask; remflow's id lies outside any index range
    ids = torch.arange(70000)
    shared = channel_keep(torch.tensor([SHARED_ID]), 256, keep=0.2, seed=0)
    assert not (channel_keep(ids, 256, keep=0.2, seed=0) == shared).all(1).any()


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


def _released_resnet9_counts() -> tuple[int, int]:
    """The released capacity-0.5 ResNet-9, counted from its architecture (paper-rem.md §2.2): a full-width
    ResNet-9 (64, 128, 256, 128 channels; residual inner convs 128 and 256) whose masked half of the channels at
    the four mask pairs is dropped at deployment. Returns (deployed, full) parameter counts."""

    def conv_bn(cin, cout, k):  # conv weight + conv bias + BN weight and bias
        return cout * cin * k * k + cout + 2 * cout

    full = (conv_bn(3, 64, 3) + conv_bn(64, 128, 5) + 2 * conv_bn(128, 128, 3) + conv_bn(128, 256, 3)
            + 2 * conv_bn(256, 256, 3) + conv_bn(256, 128, 3) + 128 * 10)
    # deployed: the kept halves 32, 64, 128, 64 at the mask pairs; the residual inner convs keep all 128 / 256
    # outputs (unmasked) and read the 64 / 128 kept stream channels
    deployed = (conv_bn(3, 32, 3) + conv_bn(32, 64, 5) + conv_bn(64, 128, 3) + conv_bn(128, 64, 3)
                + conv_bn(64, 128, 3) + conv_bn(128, 256, 3) + conv_bn(256, 128, 3) + conv_bn(128, 64, 3)
                + 64 * 10)
    return deployed, full


def test_paper_parameter_counts():
    deployed, full = _released_resnet9_counts()
    assert (deployed, full) == (940_032, 2_276_224)
    half = build_model(ResNet9Cfg(name="resnet9", width=32), 3, 10, 32)  # the default layout: released
    assert count_params(half) == deployed  # the paper's capacity-0.5 model
    conv_weights = sum(p.numel() for k, p in half.named_parameters() if k.endswith("conv.weight"))
    assert conv_weights == 936_800
    half.widen_(half.added_for_ratio(1.0))
    assert count_params(half) == full  # expansion ratio 1 = the full-width network
    full_model = build_model(ResNet9Cfg(name="resnet9", width=64, layout="every_conv"), 3, 10, 32)
    assert count_params(full_model) == full and shape_signature(full_model) == shape_signature(half)
    # the residual blocks' inner activations are never widened or masked
    assert set(half.added) == {"c1", "c2", "c3", "c4"} and half.res1.a.bn.add_out == 0


def test_every_conv_layout_is_a_uniformly_half_width_network():
    half = build_model(ResNet9Cfg(name="resnet9", width=32, layout="every_conv"), 3, 10, 32)
    assert count_params(half) == 570_816
    half.widen_(half.added_for_ratio(1.0))
    assert count_params(half) == 2_276_224 and set(half.added) == {"c1", "c2", "r1", "c3", "r2", "c4"}


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
def test_the_recipe_builds_torch_optim_with_the_released_settings(kind):
    """momentum 0.9 and weight decay 5e-4 from the recipe's defaults, only the trainable parameters."""
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


def test_dormant_added_channels_are_the_masked_half_of_a_pretrained_full_width_network():
    """Pretraining at full width with the added half masked off (the released capacity-0.5 model) leaves the
    deployed half as deployed-width pretraining does and shrinks the unused half by `dormant_factor`: REM's
    `added_init: dormant` starts from exactly that state."""
    from remflow.methods.rem import dormant_factor
    from remflow.params import Recipe
    from remflow.train import lr_factor, make_optimizer

    cfg, c, size = MODELS[0]
    recipe = Recipe(lr=0.05, epochs=1, schedule="warmup_linear", batch_size=8)
    steps = 30
    deployed = _model(cfg, c, size)
    masked = _model(cfg, c, size).widen_(deployed.added_for_ratio(1.0), seed=4)
    init = {k: v.clone() for k, v in masked.state_dict().items()}
    off = lambda n: Route(torch.zeros(n, dtype=torch.long), keep=0.0, seed=0)  # every added channel masked off
    gen = torch.Generator().manual_seed(0)
    for net, route in ((deployed, None), (masked, off)):
        opt = make_optimizer(net.parameters(), recipe)
        base = [g["lr"] for g in opt.param_groups]
        g = torch.Generator().manual_seed(1)
        for t in range(steps):
            x, y = torch.randn(8, c, size, size, generator=g), torch.randint(0, 10, (8,), generator=g)
            opt.param_groups[0]["lr"] = base[0] * lr_factor(t, steps, recipe.schedule)
            opt.zero_grad()
            out = net(x) if route is None else net(x, route(8))
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
    f = dormant_factor(recipe, steps)
    assert 0.5 < f < 1
    w, w0 = masked.conv2.conv.weight.data, init["conv2.conv.weight"]
    o, i = masked.conv2.conv.base_out, masked.conv2.conv.base_in
    assert torch.allclose(w[:o, :i], deployed.conv2.conv.weight.data, atol=1e-5)  # the deployed half: the same
    assert torch.allclose(w[o:], f * w0[o:], atol=1e-6) and torch.allclose(w[:o, i:], f * w0[:o, i:], atol=1e-6)
    assert torch.allclose(masked.conv2.bn.weight.data[o:], torch.full((o,), f), atol=1e-6)
    x = torch.randn(4, c, size, size)
    assert torch.allclose(masked.eval()(x), deployed.eval()(x), atol=1e-4)

    # REM's dormant widening of the deployed-width model: the same statistics
    twin = _model(cfg, c, size).widen_(deployed.added_for_ratio(1.0), seed=4, dormant=f)
    tw = twin.conv2.conv.weight.data
    assert torch.allclose(tw[o:], f * w0[o:]) and torch.all(twin.conv2.conv.bias.data[o:] == 0)
    assert torch.allclose(twin.conv2.bn.weight.data[o:], torch.full((o,), f))


def test_calibrating_added_statistics_leaves_the_deployed_model_unchanged():
    cfg, c, size = MODELS[0]
    model = _model(cfg, c, size)
    model.train()
    for _ in range(3):
        model(torch.randn(16, c, size, size))  # some real running statistics
    x = torch.randn(5, c, size, size)
    before = model.eval()(x)
    model.widen_(model.added_for_ratio(1.0), seed=2, dormant=0.7)
    bn = model.conv2.bn
    base_stats = (bn.running_mean[: bn.base_out].clone(), bn.running_var[: bn.base_out].clone())
    model.calibrate_added_stats_(torch.randn(16, c, size, size) for _ in range(4))
    assert torch.equal(bn.running_mean[: bn.base_out], base_stats[0])
    assert torch.equal(bn.running_var[: bn.base_out], base_stats[1])
    assert not torch.all(bn.running_mean[bn.base_out :] == 0)  # statistics from data, not the 0/1 placeholders
    assert torch.equal(model.eval()(x), before)
