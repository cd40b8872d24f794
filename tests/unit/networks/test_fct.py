"""FCT (common.networks.fct): stage shapes, presets' sizes, TF attention semantics, dropout, TorchScript, bad input."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.losses import DeepSupervisionLoss, DiceCELoss

from common.networks.fct import (
    FCT,
    FCT_PRESETS,
    ChannelLayerNorm,
    ConvAttention,
    DepthwiseProjection,
    fct_preset,
    model_complexity,
)

# Tiny network: every block, both head counts > 1 and three Wide-Focus branches, cheap at 32-64 px on CPU.
TINY = dict(filters=(4, 8, 8, 8, 16, 8, 8, 8, 4), heads=(2, 1, 2, 1, 2, 1, 2, 1, 2), wide_focus_dilations=(1, 2, 3))
H, W = 64, 32  # not square, so a swapped axis would show


def _tiny(**overrides) -> FCT:
    torch.manual_seed(0)
    return FCT(in_channels=3, out_channels=3, **{**TINY, **overrides})


def test_stage_shapes_and_outputs_train_and_eval() -> None:
    net = _tiny()
    f = TINY["filters"]
    x = torch.randn(2, 3, H, W)
    shapes: dict[str, tuple[int, ...]] = {}
    blocks = {f"encoder{i}": b for i, b in enumerate(net.encoder)} | {"bottleneck": net.bottleneck}
    blocks |= {f"decoder{i}": b for i, b in enumerate(net.decoder)}
    for name, block in blocks.items():
        block.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))

    net.train()
    outputs = net(x)
    for i in range(4):  # encoder block i+1 pools to 1/2^(i+1)
        assert shapes[f"encoder{i}"] == (2, f[i], H // 2 ** (i + 1), W // 2 ** (i + 1))
    assert shapes["bottleneck"] == (2, f[4], H // 32, W // 32)
    for j in range(4):  # decoder blocks 6-9 climb back to 1/2
        assert shapes[f"decoder{j}"] == (2, f[5 + j], H // 2 ** (4 - j), W // 2 ** (4 - j))
    assert isinstance(outputs, list) and len(outputs) == 3
    assert [tuple(o.shape) for o in outputs] == [(2, 3, H, W), (2, 3, H // 2, W // 2), (2, 3, H // 4, W // 4)]

    net.eval()
    with torch.no_grad():
        logits = net(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, H, W)


def test_without_dropout_eval_output_is_the_first_training_output() -> None:
    net = _tiny(dropout=0.0, wide_focus_dropout=0.0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        train_outputs = net.train()(x)
        eval_logits = net.eval()(x)
    torch.testing.assert_close(train_outputs[0], eval_logits)


def test_without_deep_supervision_returns_a_tensor_and_has_no_extra_heads() -> None:
    net = _tiny(deep_supervision=False).train()
    assert len(net.deep_supervision_heads) == 0
    out = net(torch.randn(1, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 32, 32)
    with_ds = sum(p.numel() for p in _tiny().parameters())
    assert sum(p.numel() for p in net.parameters()) < with_ds


# Research notes fct_refnet.md section 1.3 counted 1 input channel (the TF model's grey input) and 3 classes
# (background, bone, muscle), and reported millions to two decimals; the exact integers are ours.
PRESET_COUNTS = [
    ("paper", 21_338_907, 21.34),  # research config B
    ("tf_main", 11_531_163, 11.53),  # research config A
    ("wide_32_512", 31_729_387, 31.73),  # research config C
]


@pytest.mark.parametrize("name, exact, research_millions", PRESET_COUNTS)
def test_preset_parameter_counts_match_research(name: str, exact: int, research_millions: float) -> None:
    with torch.device("meta"):
        net = fct_preset(name, in_channels=1, out_channels=3)
    count = sum(p.numel() for p in net.parameters())
    assert count == exact
    assert round(count / 1e6, 2) == research_millions
    # The count does not depend on the input size (the TF per-row input LayerNorm did: 2 * W parameters).
    assert model_complexity(name, spatial_size=64)["parameters"] == exact


def test_tf_main_fct_layer_sizes_match_research_table() -> None:
    # Research section 1.3, "FCT-layer params" column: 12.0 k, 46.5 k, 183 k, 727 k, 6.51 M, then mirrored.
    with torch.device("meta"):
        net = fct_preset("tf_main", in_channels=1, out_channels=3)
    layers = [b.layer for b in net.encoder] + [net.bottleneck.layer] + [b.layer for b in net.decoder]
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    assert sizes == [12_000, 46_528, 183_168, 726_784, 6_505_728, 726_784, 183_168, 46_528, 12_000]


def test_presets_by_name_and_overrides() -> None:
    assert set(FCT_PRESETS) == {"paper", "tf_main", "wide_32_512"}
    with torch.device("meta"):
        net = fct_preset("wide_32_512", in_channels=3, out_channels=2, dropout=0.0)
        default = FCT()
    assert net.filters == (32, 64, 128, 256, 512, 256, 128, 64, 32) and net.heads == (2,) * 9
    assert len(net.encoder[0].layer.wide_focus.branches) == 3
    assert net.head.logits.out_channels == 2 and net.encoder[0].convs[-1].p == 0.0
    # The class defaults are the paper preset.
    assert default.filters == FCT_PRESETS["paper"]["filters"] and default.heads == FCT_PRESETS["paper"]["heads"]
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*\['paper', 'tf_main', 'wide_32_512'\]"):
        fct_preset("nope")


def test_bundle_config_instantiates_the_preset() -> None:
    config = {
        "network_def": {
            "_target_": "common.networks.fct.fct_preset",
            "name": "tf_main",
            "in_channels": 3,
            "out_channels": 3,
            "filters": list(TINY["filters"]),  # JSON lists
        }
    }
    net = ConfigParser(config).get_parsed_content("network_def")
    assert isinstance(net, FCT) and net.heads == (2,) * 9
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_attention_has_keras_head_width_and_kv_stride() -> None:
    torch.manual_seed(0)
    channels, heads = 6, 3
    attention = ConvAttention(channels, heads)
    # Keras MultiHeadAttention(num_heads=h, key_dim=C): every head is C wide, so the projections are C -> h*C.
    assert attention.query.out_features == heads * channels and attention.out.in_features == heads * channels
    depthwise_and_norms = 3 * (9 * channels + 2 * channels)
    dense = 4 * heads * channels**2 + 3 * heads * channels + channels
    assert sum(p.numel() for p in attention.parameters()) == depthwise_and_norms + dense

    x = torch.randn(2, channels, 8, 6)
    q, k, v = attention.query_projection(x), attention.key_projection(x), attention.value_projection(x)
    assert q.shape == (2, channels, 8, 6) and k.shape == v.shape == (2, channels, 4, 3)
    # Reference: softmax over all H*W/4 keys, per head, scaled by 1/sqrt(C).
    qh = attention.query(q.flatten(2).transpose(1, 2)).reshape(2, 48, heads, channels)
    kh = attention.key(k.flatten(2).transpose(1, 2)).reshape(2, 12, heads, channels)
    vh = attention.value(v.flatten(2).transpose(1, 2)).reshape(2, 12, heads, channels)
    weights = torch.softmax(torch.einsum("bqhc,bkhc->bhqk", qh, kh) / channels**0.5, dim=-1)
    mixed = torch.einsum("bhqk,bkhc->bqhc", weights, vh).reshape(2, 48, heads * channels)
    expected = attention.out(mixed).transpose(1, 2).reshape(2, channels, 8, 6)
    torch.testing.assert_close(attention(x), expected, rtol=1e-4, atol=1e-5)


def test_strided_projection_uses_tf_same_padding() -> None:
    torch.manual_seed(0)
    projection = DepthwiseProjection(4, stride=2)
    x = torch.randn(1, 4, 8, 8)
    # TF "same" at stride 2 on an even size pads one row/column at the bottom/right only.
    expected = projection.norm(F.conv2d(F.pad(x, [0, 1, 0, 1]), projection.conv.weight, stride=2, groups=4))
    torch.testing.assert_close(projection(x), expected)
    # Odd sizes (the bottleneck of a 96 px input is 3x3) pad both sides, to ceil(size / 2).
    assert projection(torch.randn(1, 4, 3, 5)).shape == (1, 4, 2, 3)


def test_channel_layer_norm_normalises_each_pixel_over_channels() -> None:
    norm = ChannelLayerNorm(5)
    x = torch.randn(2, 5, 4, 3) * 3 + 1
    expected = F.layer_norm(x.permute(0, 2, 3, 1), [5], eps=1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)


def test_eval_is_deterministic_and_training_dropout_is_not() -> None:
    net = _tiny()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        net.eval()
        first, second = net(x), net(x)
        net.train()
        train_a, train_b = net(x)[0], net(x)[0]
    assert torch.equal(first, second)
    assert not torch.allclose(train_a, train_b)


def test_first_norm_sees_a_one_channel_image_of_any_size() -> None:
    torch.manual_seed(0)
    net = FCT(in_channels=1, out_channels=3, **TINY).eval()
    # The official PyTorch port's nn.LayerNorm(1) normalised a single value to 0; no such norm may remain.
    assert not any(isinstance(m, nn.LayerNorm) and m.normalized_shape == (1,) for m in net.modules())
    assert not any(isinstance(m, ChannelLayerNorm) and m.num_channels == 1 for m in net.modules())
    first_norm = net.encoder[0].norm
    for size in (32, 64):  # the TF per-row norm was tied to one width
        a, b = torch.rand(1, 1, size, size), torch.rand(1, 1, size, size) * 2
        out_a, out_b = first_norm(a), first_norm(b)
        assert out_a.shape == a.shape and out_a.std() > 0.5 and not torch.allclose(out_a, out_b)
    with torch.no_grad():
        x = torch.rand(1, 1, 32, 32)
        assert not torch.allclose(net(x), net(torch.flip(x, dims=[-1])))


def test_training_step_reaches_every_parameter() -> None:
    net = _tiny().train()
    x = torch.randn(2, 3, 32, 32)
    label = torch.randint(0, 3, (2, 1, 32, 32)).float()
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weights=[0.57, 0.29, 0.14])
    loss = loss_fn(net(x), label)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.deep_supervision_heads[1].logits.weight.grad.abs().sum() > 0  # the 1/4 head is in the loss


def test_torchscript_round_trip_matches_eager() -> None:
    net = _tiny().eval()
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    outputs = loaded.train()(x)
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 64, 32), (1, 3, 32, 16), (1, 3, 16, 8)]


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 32, 32), r"expected a \(B, 3, H, W\) input, got shape \[3, 32, 32\]"),
        ((1, 3, 32, 32, 32), r"expected a \(B, 3, H, W\) input"),
        ((1, 1, 32, 32), r"expected a \(B, 3, H, W\) input, got shape \[1, 1, 32, 32\]"),
        ((1, 3, 48, 32), r"\[48, 32\] is not divisible by the total stride 32"),
        ((1, 3, 32, 16), r"\[32, 16\] is not divisible by the total stride 32"),
    ],
)
def test_bad_input_is_rejected_clearly(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _tiny()(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": (4, 8, 8, 8, 16, 8, 8, 8)}, "filters needs 9 positive ints"),
        ({"heads": (2,) * 8 + (0,)}, "heads needs 9 positive ints"),
        ({"wide_focus_dilations": ()}, "wide_focus_dilations needs at least one positive int"),
        ({"in_channels": 0}, "must be positive"),
    ],
)
def test_bad_configuration_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FCT(**{**TINY, **kwargs})


def test_model_complexity_counts_attention_once() -> None:
    stats = model_complexity("tf_main", spatial_size=64)
    assert stats["flops"] > stats["attention_flops"] > 0
    # On the meta device SDPA decomposes into bmm, so the counter sees the attention too: it must equal ours.
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = fct_preset("tf_main", in_channels=1).eval()
        x = torch.empty(1, 1, 64, 64)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    bmm = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "bmm" in str(op))
    assert bmm == stats["attention_flops"]
    assert counter.get_total_flops() == stats["flops"]


# Wide enough for weight statistics: every kernel but the 1x1 logits (48 weights) has at least 144 weights.
WIDE = dict(filters=(16, 32, 32, 32, 64, 32, 32, 32, 16), heads=(2, 3) * 4 + (2,), wide_focus_dilations=(1, 2))


def _fans(conv: nn.Conv2d) -> tuple[int, int]:
    receptive = conv.weight[0, 0].numel()
    return conv.weight.shape[1] * receptive, conv.weight.shape[0] * receptive


def _assert_he_normal(name: str, conv: nn.Conv2d) -> None:
    # Keras he_normal: truncated at 2 sigma of the drawing std, whose truncation keeps the variance at 2 / fan_in.
    std = (2.0 / _fans(conv)[0]) ** 0.5
    w = conv.weight.detach()
    assert abs(w.std().item() / std - 1) < 0.15, f"{name}: std {w.std().item():.4f}, he_normal {std:.4f}"
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6, f"{name}: not truncated at 2 sigma"


def _assert_uniform(name: str, weight: torch.Tensor, bound: float) -> None:
    w = weight.detach()
    assert w.abs().max().item() <= bound + 1e-6, f"{name}: exceeds the glorot bound {bound:.4f}"
    assert abs(w.std().item() / (bound / 3**0.5) - 1) < 0.15, f"{name}: std {w.std().item():.4f}, bound {bound:.4f}"


def test_initialisation_follows_the_keras_defaults_of_the_tf_code() -> None:
    # PyTorch's defaults (kaiming_uniform with a=sqrt(5)) are 2.4x narrower than he_normal for the block convs; at init
    # the logits of the paper preset would be ~10x smaller than with the TF code's initialisation.
    torch.manual_seed(0)
    net = FCT(in_channels=3, out_channels=3, **WIDE)
    he_modules = {id(m) for b in [*net.encoder, net.bottleneck, *net.decoder] for m in b.convs.modules()}
    he_modules |= {id(m) for b in net.decoder for m in b.up_conv.modules()}
    he_modules |= {id(m) for h in [net.head, *net.deep_supervision_heads] for m in h.convs.modules()}
    counts = {"he_normal": 0, "glorot_uniform": 0, "einsum": 0}
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0, f"{name}: Keras biases start at zero"
        if isinstance(module, nn.Conv2d) and id(module) in he_modules:
            _assert_he_normal(name, module)  # block, up-sampling and output-head convs: kernel_initializer="he_normal"
            counts["he_normal"] += 1
        elif isinstance(module, nn.Conv2d):
            # everything else, the depthwise projections and the 1x1 logits included, keeps Keras' glorot_uniform
            _assert_uniform(name, module.weight, (6.0 / sum(_fans(module))) ** 0.5)
            counts["glorot_uniform"] += 1
        elif isinstance(module, ConvAttention):
            # Keras computes the glorot fans of the einsum kernels (C, heads, C) and (heads, C, C) like a conv's.
            channels, heads = module.channels, module.heads
            for dense in (module.query, module.key, module.value):
                _assert_uniform(name, dense.weight, (6.0 / (heads * channels + channels**2)) ** 0.5)
            _assert_uniform(name + ".out", module.out.weight, (6.0 / (2 * heads * channels)) ** 0.5)
            counts["einsum"] += 1
    # he_normal: 9 blocks x 2 convs + 4 up-convs + 3 heads x 2 convs; glorot: 9 layers x (3 depthwise + attention
    # conv + 3 Wide-Focus convs) + 3 pyramid convs + 3 logits convs.
    assert counts == {"he_normal": 28, "glorot_uniform": 69, "einsum": 9}


def test_first_norm_standardises_each_image_over_all_channels_and_pixels() -> None:
    # The TF code's LayerNormalization on inputs[..., -1] normalised each image row of the last channel; ours is a
    # per-image GroupNorm(1, C) (documented): one mean and variance per image, all channels feed block 1.
    torch.manual_seed(0)
    net = FCT(in_channels=3, out_channels=3, **TINY)
    first_norm = net.encoder[0].norm
    assert isinstance(first_norm, nn.GroupNorm) and first_norm.num_groups == 1 and first_norm.eps == 1e-5
    x = torch.rand(2, 3, 16, 8) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + torch.tensor([[[[0.0]]], [[[3.0]]]])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(first_norm(x), expected, rtol=1e-5, atol=1e-5)
    # Per row (the TF axes) would make every row zero-mean; ours keeps the rows' relative brightness.
    assert first_norm(x).mean(dim=(1, 3)).abs().max() > 0.1


def test_layer_norm_epsilons_match_keras() -> None:
    # Keras LayerNormalization() defaults to epsilon=1e-3 (the Q/K/V projections); the TF code passes 1e-5 elsewhere.
    net = FCT(in_channels=3, out_channels=3, **TINY)
    projection_norms = {id(m.norm) for m in net.modules() if isinstance(m, DepthwiseProjection)}
    norms = [m for m in net.modules() if isinstance(m, ChannelLayerNorm)]
    assert len(projection_norms) == 3 * 9
    for norm in norms:
        assert norm.eps == (1e-3 if id(norm) in projection_norms else 1e-5)
    # 8 block norms, 9 FCT-layer norms, 3 output-head norms, 27 projection norms
    assert len(norms) == 8 + 9 + 3 + 27


def test_dropout_sits_where_the_tf_code_puts_it() -> None:
    # Dropout 0.3 after every block's two convolutions, 0.1 after every Wide-Focus convolution, nowhere else (the TF
    # attention-output dropout and stochastic depth are configured at 0).
    net = FCT(in_channels=3, out_channels=3, **TINY)
    rates = sorted(m.p for m in net.modules() if isinstance(m, nn.Dropout))
    wide_focus_convs = len(TINY["wide_focus_dilations"]) + 1
    assert rates == [0.1] * (9 * wide_focus_convs) + [0.3] * 9
    for block in [*net.encoder, net.bottleneck, *net.decoder]:
        assert isinstance(block.convs[-1], nn.Dropout) and block.convs[-1].p == 0.3
