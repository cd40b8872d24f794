"""COHRA-UNet (common.networks.cohra_unet): every option of every axis, the MTCM-KD preset, TorchScript, sizes."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch.utils.flop_counter import FlopCounterMode

from common.networks.blocks import CBAMChannelGate, CBAMSpatialGate, TokenTransformer, lab_num_groups, make_norm
from common.networks.cohra_unet import COHRAUNet, model_complexity, mtcm_kd_backbone

# Tiny base: 3 downsamplings and a transformer bottleneck on a 2^3 token grid at 32^3.
BASE = dict(channels=(8, 16, 32, 64), img_size=32, transformer_layers=1)
SIZE = 32

OPTIONS = [
    *[{"act": name} for name in ("relu", "leakyrelu", "prelu", "gelu", "mish", "silu")],
    {"act": ("leakyrelu", {"negative_slope": 0.2, "inplace": True})},
    *[{"norm": name} for name in ("batch", "instance", "group", "layer")],
    {"norm": ("group", {"num_groups": 2})},
    {"stem_norm": "batch"},
    *[{"block": name} for name in ("residual", "plain")],
    *[{"upsample": name} for name in ("deconv", "linear", "nearest", "pixelshuffle", "trilinear")],
    *[{"channel_attention": name} for name in ("cbam", "se", "none")],
    *[{"spatial_attention": name} for name in ("cbam", "attention_gate", "none")],
    {"channel_attention": "none", "spatial_attention": "none"},
    *[{"attention_placement": name} for name in ("decoder", "skip", "encoder")],
    {"bottleneck_transformer": False},
    {"skip_transformers": 1},
    {"skip_transformers": 2, "bottleneck_transformer": False},
    {"transformer_patch_size": 1, "transformer_heads": 4, "transformer_hidden_size": 32},
    {"bottleneck_transformer": False, "channels": (8, 16, 32, 64, 64), "deep_supervision_heads": 3},
    {"channels": (8, 16), "deep_supervision_heads": 0},
    {"deep_supervision": False},
    {"deep_supervision_heads": 1},
]


def _ids(option: dict) -> str:
    return ",".join(f"{k}={v[0] if isinstance(v, tuple) and isinstance(v[0], str) else v}" for k, v in option.items())


def _expected_ds_count(net: COHRAUNet) -> int:
    return len(net.deep_supervision_heads) if net.deep_supervision else 0


# 2D shares every code path but the factories' dimension; a few options that build dimension-specific layers.
OPTIONS_2D = [{}, {"upsample": "linear"}, {"upsample": "pixelshuffle"}, {"spatial_attention": "attention_gate"},
              {"norm": "batch", "channel_attention": "se", "skip_transformers": 1}]  # fmt: skip
CASES = [pytest.param(3, o, id="3d-" + _ids(o)) for o in OPTIONS] + [
    pytest.param(2, o, id="2d-" + (_ids(o) or "default")) for o in OPTIONS_2D
]


# Anisotropic and small on CPU: a 2x1x1 token grid still exercises attention, at a quarter of 32^3's cost.
GRID_SHAPE = {3: (32, 16, 16), 2: (32, 32)}


@pytest.mark.parametrize("spatial_dims, option", CASES)
def test_every_option_trains_and_infers(spatial_dims: int, option: dict) -> None:
    torch.manual_seed(0)
    shape = GRID_SHAPE[spatial_dims]
    net = COHRAUNet(spatial_dims, 4, 3, **{**BASE, "img_size": shape, **option})
    x = torch.randn(1, 4, *shape)

    net.train()
    outputs = net(x)
    n_ds = _expected_ds_count(net)
    if n_ds:
        assert isinstance(outputs, list) and len(outputs) == 1 + n_ds
        for k, out in enumerate(outputs):
            assert out.shape == (1, 3, *(s // 2**k for s in shape))
    else:
        assert isinstance(outputs, torch.Tensor) and outputs.shape == (1, 3, *shape)
        outputs = [outputs]
    sum(out.square().mean() for out in outputs).backward()
    unused = [name for name, p in net.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused}"

    net.eval()
    with torch.no_grad():
        logits = net(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 3, *shape)
    assert torch.isfinite(logits).all()


def test_default_is_the_reconstruction() -> None:
    net = COHRAUNet()
    assert (net.in_channels, net.out_channels, net.channels, net.size_divisor) == (4, 3, (32, 64, 128, 256), 16)
    assert isinstance(net.bottleneck, TokenTransformer)
    assert len(net.bottleneck.layers) == 4 and net.bottleneck.pos_embed.shape == (1, 256, 8, 8, 8)
    gates = [type(m) for m in net.decoder[0].concat_attention]
    assert gates == [CBAMChannelGate, CBAMSpatialGate]
    assert len(net.deep_supervision_heads) == 2
    assert "RECONSTRUCTION" in COHRAUNet.__doc__ and "2.3" in COHRAUNet.__doc__
    # The figure quoted in the docs (python -m common.networks.cohra_unet).
    assert sum(p.numel() for p in net.parameters()) == 13_806_214


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_cbam_channel_gate_is_the_cbam_formula(spatial_dims: int) -> None:
    """sigmoid(MLP(avg-pool) + MLP(max-pool)) rescales the channels, eager and scripted, channels-last bf16 too."""
    torch.manual_seed(0)
    gate = CBAMChannelGate(spatial_dims, 32, reduction=4).eval()
    x = torch.randn(2, 32, *[5 + d for d in range(spatial_dims)])
    axes = list(range(2, x.dim()))
    scores = gate.mlp(x.mean(dim=axes)) + gate.mlp(x.amax(dim=axes))
    expected = x * torch.sigmoid(scores).reshape(2, 32, *[1] * spatial_dims)
    with torch.no_grad():
        assert torch.allclose(gate(x), expected, atol=1e-6)
        assert torch.allclose(torch.jit.script(gate)(x), expected, atol=1e-6)
        if spatial_dims == 3:
            fast = x.to(memory_format=torch.channels_last_3d)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.allclose(gate(fast).float(), expected, atol=0.05, rtol=0.02)


def test_mtcm_kd_backbone_matches_the_hand_count() -> None:
    net = mtcm_kd_backbone()
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 9_459_478
    assert abs(n_params - 9.46e6) / 9.46e6 < 0.005
    assert not isinstance(net.bottleneck, TokenTransformer)
    assert [type(m) for m in net.decoder[0].concat_attention] == [CBAMChannelGate]
    # lab GroupNorm rule: 384-channel concatenation -> 6 groups, 256 -> 4
    assert net.decoder[0].block.conv_block[0].num_groups == 6 and net.bridge.conv_block[3].num_groups == 4


def test_mtcm_kd_outputs_for_student_and_teacher() -> None:
    net = mtcm_kd_backbone().train()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        student = net(x)
        logits, features = net.forward_features(x)
    assert [tuple(o.shape) for o in student] == [(1, 4, 16, 16, 16), (1, 4, 8, 8, 8), (1, 4, 4, 4, 4)]
    assert [tuple(f.shape) for f in features] == [(1, 32, 16, 16, 16), (1, 64, 8, 8, 8), (1, 128, 4, 4, 4)]
    assert torch.equal(logits, student[0])


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: COHRAUNet(**BASE), (1, 4, SIZE, SIZE, SIZE)),
        (mtcm_kd_backbone, (1, 1, 16, 16, 16)),
    ],
    ids=["default", "mtcm_kd"],
)
def test_torchscript_matches_eager(build, shape) -> None:
    torch.manual_seed(0)
    net = build().eval()
    scripted = torch.jit.script(net)
    x = torch.randn(shape)
    # a second size exercises the interpolated positional embedding inside the scripted graph
    x_other = torch.randn(shape[0], shape[1], 2 * shape[2], shape[3], shape[4])
    with torch.no_grad():
        for inp in (x, x_other):
            torch.testing.assert_close(scripted(inp), net(inp))
        torch.testing.assert_close(scripted.forward_features(x)[1][1], net.forward_features(x)[1][1])
    scripted.train()
    net.train()
    with torch.no_grad():
        assert len(scripted(x)) == len(net(x)) == 3


@pytest.mark.parametrize(
    "option",
    [
        {"act": "prelu", "norm": "layer", "upsample": "pixelshuffle", "channel_attention": "se"},
        {"act": "silu", "norm": "batch", "upsample": "nearest", "spatial_attention": "attention_gate"},
        {"act": "mish", "block": "plain", "upsample": "linear", "attention_placement": "encoder"},
        {"act": "gelu", "norm": "instance", "attention_placement": "skip", "skip_transformers": 2},
    ],
    ids=["prelu-layer-pixelshuffle-se", "silu-batch-nearest-gate", "mish-plain-linear-encoder", "gelu-skipvit"],
)
def test_non_default_options_script_too(option: dict) -> None:
    torch.manual_seed(0)
    net = COHRAUNet(**{**BASE, **option}).eval()
    x = torch.randn(1, 4, SIZE, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_positional_embedding_is_interpolated_for_other_sizes() -> None:
    torch.manual_seed(0)
    net = COHRAUNet(**BASE).eval()
    bottleneck = net.bottleneck
    assert bottleneck.positional_embedding([2, 2, 2]) is bottleneck.pos_embed  # training grid: used unchanged
    assert bottleneck.positional_embedding([4, 2, 3]).shape == (1, 64, 4, 2, 3)
    with torch.no_grad():
        out = net(torch.randn(1, 4, 64, 32, 48))
    assert out.shape == (1, 3, 64, 32, 48)
    # a sliding window at the training patch size runs on a volume that is itself not divisible by 16
    with torch.no_grad():
        out = sliding_window_inference(torch.randn(1, 4, 40, 36, 32), (SIZE,) * 3, 1, net, overlap=0.25)
    assert out.shape == (1, 3, 40, 36, 32)


def test_input_not_divisible_by_total_stride_is_a_clear_error() -> None:
    net = COHRAUNet(**BASE).eval()
    with pytest.raises(ValueError, match="not divisible by the total stride 16"):
        net(torch.randn(1, 4, 40, 32, 32))
    with pytest.raises(ValueError, match="expected a"):
        net(torch.randn(1, 4, 32, 32))
    plain = COHRAUNet(**{**BASE, "bottleneck_transformer": False})
    assert plain.size_divisor == 8


@pytest.mark.parametrize(
    "option, message",
    [
        ({"act": "swishy"}, "unknown activation"),
        ({"norm": "weight"}, "unknown normalization"),
        ({"stem_norm": "localresponse"}, "unknown normalization"),
        ({"block": "dense"}, "unknown block"),
        ({"upsample": "bicubic"}, "unknown upsample"),
        ({"channel_attention": "eca"}, "unknown channel_attention"),
        ({"spatial_attention": "deformable"}, "unknown spatial_attention"),
        ({"attention_placement": "everywhere"}, "unknown attention_placement"),
        ({"img_size": 40}, "img_size"),
        ({"skip_transformers": 4}, "skip_transformers"),
        ({"deep_supervision_heads": 3}, "deep_supervision_heads"),
        ({"spatial_dims": 1}, "spatial_dims"),
    ],
    ids=lambda v: v if isinstance(v, str) else next(iter(v)),
)
def test_bad_options_are_clear_errors(option: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        COHRAUNet(**{**BASE, **option})


def test_lab_group_rule_and_layer_norm() -> None:
    assert [lab_num_groups(c) for c in (32, 64, 96, 192, 384)] == [4, 4, 6, 6, 6]
    layer = make_norm("layer", 3, 12)
    assert isinstance(layer, torch.nn.GroupNorm) and layer.num_groups == 1


def test_model_complexity_counts_like_a_real_forward() -> None:
    net = COHRAUNet(**BASE).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.randn(1, 4, SIZE, SIZE, SIZE))
    stats = model_complexity(SIZE, **BASE)
    assert stats["flops"] == counter.get_total_flops() > 0
    assert stats["parameters"] == sum(p.numel() for p in net.parameters())
