"""Fold ensembles, mirroring test-time augmentation (``common.inferers``) and connected-component postprocessing
(``common.transforms.postprocessing``), alone and switched on in every bundle's ``inference.json``.

The bundle runs go through ``monai.bundle.ConfigWorkflow`` (what ``python -m monai.bundle run`` builds) in this
process, on one tiny phantom per bundle with the demo's narrow networks and two random checkpoints.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SlidingWindowInferer

from common.errors import BadInputError, bad_input_message
from common.fast_inference import FastInferer
from common.inferers import (
    EnsembleCheckpointError,
    EnsembleCheckpointNotFoundError,
    EnsembleInferer,
    load_networks,
    mirror_flips,
    probabilities_to_logits,
)
from common.transforms.postprocessing import (
    KeepLargestComponentPerLabeld,
    RelabelSmallComponentsd,
)
from tests.helpers import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"


def _conv(
    spatial_dims: int,
    in_channels: int = 2,
    out_channels: int = 3,
    symmetric: bool = False,
    seed: int = 0,
    kernel_size: int = 3,
):
    """A translation-equivariant stand-in network; with ``symmetric`` its kernel is mirror-symmetric along every
    spatial axis, so (zero padding) it is also flip-equivariant: ``net(flip(x)) == flip(net(x))``."""
    torch.manual_seed(seed)
    conv = (nn.Conv3d if spatial_dims == 3 else nn.Conv2d)(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2
    )
    if symmetric:
        with torch.no_grad():
            kernel = conv.weight
            for dim in range(2, kernel.dim()):
                kernel = (kernel + torch.flip(kernel, (dim,))) / 2
            conv.weight.copy_(kernel)
    return conv.eval()


class _Counting(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# mirroring
# ---------------------------------------------------------------------------------------------------------------


def test_mirror_flips_are_every_subset_of_the_axes_unflipped_first():
    assert mirror_flips([]) == [()]
    assert mirror_flips([0, 1]) == [(), (2,), (3,), (2, 3)]
    flips = mirror_flips([0, 1, 2])
    assert len(flips) == 8 and flips[0] == () and len(set(flips)) == 8 and (2, 3, 4) in flips


@pytest.mark.parametrize("spatial_dims, axes, passes", [(3, [0, 1, 2], 8), (2, [0, 1], 4), (3, [2], 2), (3, [], 1)])
def test_mirroring_runs_the_inferer_once_per_flip_and_network(spatial_dims, axes, passes):
    nets = [_Counting(_conv(spatial_dims, seed=s)) for s in range(2)]
    x = torch.randn(1, 2, *([8] * spatial_dims))
    EnsembleInferer(SimpleInferer(), "softmax", mirror_axes=axes)(x, nets[0])
    assert nets[0].calls == passes
    EnsembleInferer(SimpleInferer(), "softmax", networks=nets, mirror_axes=axes)(x, nn.Identity())
    assert [n.calls for n in nets] == [2 * passes, passes]


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize(
    "inferer, kernel_size",
    [(SimpleInferer(), 3), (SlidingWindowInferer(roi_size=(6, 8, 4), overlap=0.5, mode="gaussian"), 1)],
    ids=["simple", "sliding_window"],
)
def test_mirroring_a_flip_equivariant_network_changes_nothing(inferer, kernel_size, activation):
    """Each flipped pass, flipped back, is exactly the plain pass: any axis mix-up would show (the input is random).

    Under a sliding window the stand-in is pointwise: a flipped input moves the window borders, where a wider
    kernel sees each window's zero padding, so only a pointwise network is flip-equivariant there.
    """
    net = _conv(3, symmetric=True, kernel_size=kernel_size)
    x = torch.randn(1, 2, 10, 12, 7)
    with torch.no_grad():
        plain = inferer(x, net)
        mirrored = EnsembleInferer(inferer, activation, mirror_axes=[0, 1, 2])(x, net)
        single = EnsembleInferer(inferer, activation, mirror_axes=[1])(x, net)
    assert mirrored.dtype == torch.float32
    for out in (mirrored, single):
        torch.testing.assert_close(_activate(out, activation), _activate(plain, activation), atol=1e-6, rtol=0)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_mirroring_a_generic_network_averages_the_flipped_back_probabilities(activation):
    net = _conv(2)  # asymmetric kernel: mirroring changes the result
    x = torch.randn(1, 2, 9, 11)
    with torch.no_grad():
        out = EnsembleInferer(SimpleInferer(), activation, mirror_axes=[0, 1])(x, net)
        expected = (
            sum(torch.flip(_activate(net(torch.flip(x, dims)), activation), dims) for dims in [(), (2,), (3,), (2, 3)])
            / 4
        )
        plain = _activate(net(x), activation)
    torch.testing.assert_close(_activate(out, activation), expected, atol=1e-6, rtol=0)
    assert (plain - expected).abs().max() > 1e-3


def test_mirror_axes_are_checked():
    with pytest.raises(ValueError, match="distinct"):
        EnsembleInferer(SimpleInferer(), "sigmoid", mirror_axes=[0, 0])
    with pytest.raises(ValueError, match="activation"):
        EnsembleInferer(SimpleInferer(), "relu")
    with pytest.raises(ValueError, match=r"need 3 spatial axes.*\[1, 2, 8, 8\]"):
        EnsembleInferer(SimpleInferer(), "sigmoid", mirror_axes=[0, 1, 2])(torch.zeros(1, 2, 8, 8), _conv(2))


# ---------------------------------------------------------------------------------------------------------------
# probability averaging and ensembles
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_probabilities_to_logits_inverts_the_activation_and_stays_finite(activation):
    p = torch.rand(2, 3, 5, 5)
    p = p if activation == "sigmoid" else p / p.sum(1, keepdim=True)
    torch.testing.assert_close(_activate(probabilities_to_logits(p, activation), activation), p, atol=1e-6, rtol=0)
    extreme = torch.zeros(1, 3, 2, 2)
    extreme[:, 0] = 1.0
    assert torch.isfinite(probabilities_to_logits(extreme, activation)).all()


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_one_network_ensemble_equals_the_plain_inferer(activation):
    net = _conv(3, seed=1)
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        plain = _activate(net(x), activation)
        one = EnsembleInferer(SimpleInferer(), activation, networks=[net])(x, nn.Identity())
        twice = EnsembleInferer(SimpleInferer(), activation, networks=[net, copy.deepcopy(net)])(x, nn.Identity())
    torch.testing.assert_close(_activate(one, activation), plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(_activate(twice, activation), plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_two_networks_give_the_mean_probability_not_the_mean_logit(activation):
    a, b = _conv(3, seed=1), _conv(3, seed=2)
    with torch.no_grad():
        a.weight.mul_(8)  # confident network: mean logits and mean probabilities part ways
    x = MetaTensor(torch.randn(1, 2, 8, 8, 8), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    with torch.no_grad():
        za, zb = a(x.as_tensor()), b(x.as_tensor())
        out = EnsembleInferer(SimpleInferer(), activation, networks=[a, b])(x, nn.Identity())
    mean = (_activate(za, activation) + _activate(zb, activation)) / 2
    torch.testing.assert_close(_activate(out.as_tensor(), activation), mean, atol=1e-6, rtol=0)
    assert (_activate((za + zb) / 2, activation) - mean).abs().max() > 1e-2
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.affine, x.affine)


@pytest.mark.parametrize("nesting", ["ensemble_outside_fast", "fast_outside_mirroring"])
def test_composes_with_fast_inferer_in_float32(nesting):
    """Both nestings give the plain wrapper's probabilities (fast path in float32 here) and float32 outputs."""
    nets = [_conv(3, seed=s) for s in (1, 2)]
    window = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25, mode="gaussian")
    x = torch.randn(1, 2, 12, 10, 9)
    if nesting == "ensemble_outside_fast":  # the bundles' nesting: each member gets FastInferer's forward
        reference = EnsembleInferer(window, "softmax", networks=nets, mirror_axes=[0, 1, 2])
        wrapped = EnsembleInferer(FastInferer(window, bf16=False), "softmax", networks=nets, mirror_axes=[0, 1, 2])
    else:  # mirroring inside: FastInferer's channels-last forward of the caller's network is what gets mirrored
        reference = EnsembleInferer(window, "softmax", mirror_axes=[0, 1, 2])
        wrapped = FastInferer(EnsembleInferer(window, "softmax", mirror_axes=[0, 1, 2]), bf16=False)
    with torch.no_grad():
        expected = torch.softmax(reference(x, nets[0]), 1)
        out = wrapped(x, nets[0])
    assert out.dtype == torch.float32 and not out.is_inference()
    torch.testing.assert_close(torch.softmax(out, 1), expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # with bf16 autocast where the CPU has it: the average is still float32, and finite
        fast_bf16 = EnsembleInferer(FastInferer(window), "sigmoid", networks=nets, mirror_axes=[0])(x, nn.Identity())
    assert fast_bf16.dtype == torch.float32 and torch.isfinite(fast_bf16).all()


# ---------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------


def test_load_networks_reads_monai_and_bare_checkpoints(tmp_path):
    template = _conv(3, seed=0)
    nets = [_conv(3, seed=s) for s in (1, 2)]
    torch.save({"model": nets[0].state_dict()}, tmp_path / "fold0.pt")
    torch.save(nets[1].state_dict(), tmp_path / "fold1.pt")
    before = copy.deepcopy(template.state_dict())
    loaded = load_networks(template.train(), [tmp_path / "fold0.pt", str(tmp_path / "fold1.pt")], device="cpu")
    assert len(loaded) == 2 and all(not m.training for m in loaded)
    for member, net in zip(loaded, nets, strict=True):
        assert member is not template and torch.equal(member.weight, net.weight)
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items()), "network_def was modified"
    assert load_networks(template, []) == []


def test_missing_ensemble_checkpoints_are_named(tmp_path):
    torch.save({"model": _conv(3).state_dict()}, tmp_path / "fold0.pt")
    missing = [tmp_path / "fold1.pt", tmp_path / "fold2.pt"]
    with pytest.raises(EnsembleCheckpointNotFoundError) as caught:
        load_networks(_conv(3), [tmp_path / "fold0.pt", *missing])
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, BadInputError)
    assert all(f"'{m}'" in str(caught.value) for m in missing) and "fold0" not in str(caught.value)


def test_checkpoint_of_another_network_or_not_a_checkpoint_is_named(tmp_path):
    torch.save({"model": _conv(3, out_channels=4).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(EnsembleCheckpointError, match=r"'.*other\.pt': its weights do not fit"):
        load_networks(_conv(3), [tmp_path / "other.pt"])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(EnsembleCheckpointError, match=r"'.*text\.pt': not a readable checkpoint") as caught:
        load_networks(_conv(3), [tmp_path / "text.pt"])
    assert bad_input_message(RuntimeError("wrapped")) is None
    assert "text.pt" in bad_input_message(caught.value)


# ---------------------------------------------------------------------------------------------------------------
# postprocessing transforms
# ---------------------------------------------------------------------------------------------------------------


def _blob(label_map: np.ndarray, corner: tuple[int, int, int], size: int, value: int) -> None:
    """``size`` voxels of ``value`` in a row along the last axis, from ``corner``."""
    x, y, z = corner
    label_map[0, x, y, z : z + size] = value


@pytest.mark.parametrize("et", [4, 3])
def test_small_enhancing_components_become_necrosis_at_the_threshold(et):
    seg = np.zeros((1, 20, 20, 20), dtype=np.uint8)
    seg[0, 2:8, 2:8, 2:8] = 2  # edema around
    _blob(seg, (4, 4, 3), 5, et)  # 5 voxels inside the edema: exactly min_size, stays
    _blob(seg, (12, 12, 2), 4, et)  # 4 voxels: below min_size, becomes necrosis
    _blob(seg, (16, 2, 2), 3, et)  # 3 voxels ...
    seg[0, 17, 3, 5] = et  # ... plus one touching it only at a corner: 26-connected, one component of 4
    out = RelabelSmallComponentsd("pred", label=et, new_label=1, min_size=5)({"pred": seg})["pred"]
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert (out[0, 4, 4, 3:8] == et).all()
    assert (out[0, 12, 12, 2:6] == 1).all() and (out[0, 16, 2, 2:5] == 1).all() and out[0, 17, 3, 5] == 1
    assert ((out == 2) == (seg == 2)).all() and (out == et).sum() == 5
    # face connectivity splits the corner-touching voxel off: a component of 3 and one of 1, both below 4
    faces = RelabelSmallComponentsd("pred", label=et, new_label=1, min_size=4, connectivity=1)({"pred": seg})["pred"]
    assert (faces[0, 12, 12, 2:6] == et).all() and faces[0, 17, 3, 5] == 1
    unchanged = RelabelSmallComponentsd("pred", label=et, new_label=1, min_size=0)({"pred": seg})["pred"]
    assert unchanged is seg


def test_relabel_keeps_meta_data_and_tensor_type():
    seg = torch.zeros(1, 8, 8, 8)
    seg[0, 1, 1, 1] = 4
    seg[0, 5:8, 5:8, 5:8] = 4
    affine = torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0]))
    image = MetaTensor(seg, affine=affine, meta={"filename_or_obj": "case_seg.nii.gz"})
    out = RelabelSmallComponentsd("pred", label=4, new_label=1, min_size=2)({"pred": image})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == seg.dtype
    torch.testing.assert_close(out.affine, image.affine)
    assert torch.equal(out.affine.diagonal().float(), affine.diagonal())
    assert out.meta["filename_or_obj"] == "case_seg.nii.gz"
    assert out[0, 1, 1, 1] == 1 and (out[0, 5:8, 5:8, 5:8] == 4).all()
    with pytest.raises(ValueError, match="single-channel label map"):
        RelabelSmallComponentsd("pred", label=4, new_label=1, min_size=2)({"pred": torch.zeros(3, 4, 4, 4)})


def test_keep_largest_component_per_organ():
    seg = np.zeros((1, 12, 12, 6), dtype=np.int64)
    seg[0, 0:4, 0:4, :] = 1  # organ 1: large
    seg[0, 10, 10, 2] = 1  # organ 1: stray island
    seg[0, 6:8, 0:2, :] = 2  # organ 2: two islands, the larger kept
    seg[0, 0:3, 8:12, :] = 2
    seg[0, 11, 0, 0] = 3  # organ 3 is not cleaned
    seg[0, 11, 5, 5] = 3
    out = KeepLargestComponentPerLabeld("pred", labels=[1, 2])({"pred": seg})["pred"]
    assert out[0, 10, 10, 2] == 0 and (out[0, 0:4, 0:4] == 1).all()
    assert (out[0, 6:8, 0:2] == 0).all() and (out[0, 0:3, 8:12] == 2).all()
    assert out[0, 11, 0, 0] == 3 and out[0, 11, 5, 5] == 3


# ---------------------------------------------------------------------------------------------------------------
# every bundle's inference.json with the switches on
# ---------------------------------------------------------------------------------------------------------------

# the demo's narrow networks (configs/demo.json "inference"), one window per pass where the bundle slides one
TINY = {
    "cohra_unet_brats": {"roi_size": [32, 32, 32], "network_def#channels": [8, 16, 32, 64]},
    "mtcm_kd_t1ce_student": {"roi_size": [32, 32, 32], "channels": [8, 16, 32, 64]},
    "fct_visible_korean": {
        "image_size": 32,
        "network_def#filters": [8, 16, 32, 64, 128, 64, 32, 16, 8],
        "network_def#heads": [1, 1, 1, 1, 1, 1, 1, 1, 1],
    },
    "refnet_synapse": {
        "network_def#features": [8, 8, 16, 32, 64, 8],
        "load_base_model": False,
        "base_spacing": None,
        "base_roi_size": [64, 32, 32],
        "base_feature_size": 12,
        "base_network_def#depths": [1, 1, 1, 1],
        "base_network_def#num_heads": [1, 1, 1, 1],
        # the slices RefNet takes at once, the same with fast_cpu on and off, so forward calls count passes
        "refine_slice_inferer#cpu_sw_batch_size": None,
    },
}
# the id of the EnsembleInferer in each config and how many passes mirroring adds
ENSEMBLE_ID = {"refnet_synapse": "refine_inferer"}
MIRROR_PASSES = {"cohra_unet_brats": 8, "mtcm_kd_t1ce_student": 8, "fct_visible_korean": 4, "refnet_synapse": 4}
ET_LABEL = 4  # the phantoms are in the BraTS 2021 convention


def _phantom(bundle: str, root: Path) -> Path:
    if bundle in ("cohra_unet_brats", "mtcm_kd_t1ce_student"):
        from common.synthetic.brats import generate_brats

        generate_brats(root, cases=1, size=(32, 32, 32), seed=3, workers=1, verbose=False)
    elif bundle == "fct_visible_korean":
        from common.synthetic.visible_korean import generate_visible_korean

        generate_visible_korean(root, cases=1, size=(32, 32), seed=3, workers=1, verbose=False)
    else:
        from common.synthetic.btcv import generate_btcv

        generate_btcv(root, cases=1, size=(48, 48, 24), seed=3, workers=1, verbose=False)
    return root


def _workflow(bundle: str, work: Path, **settings):
    from monai.bundle import ConfigWorkflow

    configs = BUNDLES / bundle / "configs"
    overrides = {
        **TINY[bundle],
        "bundle_root": str(BUNDLES / bundle),
        "dataset_dir": str(work / "data"),
        "ckpt_dir": str(work / "models"),
        "num_workers": 0,
        "dataloader#num_workers": 0,
        # the PyTorch passes, whose forward calls _run counts (OpenVINO runs a converted copy of the network)
        "fast_cpu_runtime": "torch",
        **settings,
    }
    return ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        **overrides,
    )


def _run(bundle: str, work: Path, out: str, **settings) -> tuple[np.ndarray, list[int]]:
    """Run the bundle's inference into ``work/out``; the label map it wrote, and forward calls per network."""
    workflow = _workflow(bundle, work, output_dir=str(work / out), **settings)
    workflow.initialize()
    inferer = workflow.parser.get_parsed_content(ENSEMBLE_ID.get(bundle, "ensemble_inferer"))
    networks = inferer.networks or [workflow.parser.get_parsed_content("network")]
    calls = [0] * len(networks)
    for i, net in enumerate(networks):
        net.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    workflow.run()
    workflow.finalize()
    (written,) = [p for p in (work / out).iterdir() if p.name.split(".")[0].endswith("_seg")]
    if written.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(written)), calls
    import nibabel as nib

    return np.asarray(nib.load(written).dataobj), calls


@pytest.fixture(scope="module", params=sorted(TINY))
def bundle_work(request, tmp_path_factory) -> dict:
    """One phantom, two random checkpoints of the bundle's (tiny) network_def, and the plain run's label map."""
    from monai.bundle import ConfigParser

    bundle = request.param
    work = tmp_path_factory.mktemp(bundle)
    _phantom(bundle, work / "data")
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    parser.update({**TINY[bundle], "bundle_root": str(BUNDLES / bundle)})
    (work / "models").mkdir()
    for seed, name in ((0, "model.pt"), (1, "fold1.pt")):
        torch.manual_seed(seed)
        torch.save({"model": parser.get_parsed_content("network_def", lazy=False).state_dict()}, work / "models" / name)
    # both switches off, models/model.pt: the bundle as before (float32: fast_cpu is the default in the mirroring test)
    plain, plain_calls = _run(bundle, work, "plain", fast_cpu=False)
    return {"bundle": bundle, "work": work, "plain": plain, "calls_per_pass": plain_calls[0]}


def test_bundle_ensemble_of_one_checkpoint_twice_and_postprocessing(bundle_work):
    """Ensemble [A, A] gives the plain run's label map (A = models/model.pt); postprocessing changes it as asked."""
    bundle, work, plain = bundle_work["bundle"], bundle_work["work"], bundle_work["plain"]
    model = str(work / "models" / "model.pt")
    post = {
        "cohra_unet_brats": {"postprocess_small_et": 10**6},
        "mtcm_kd_t1ce_student": {"postprocess_small_et": 10**6},
        "refnet_synapse": {"keep_largest_component": True},
    }.get(bundle, {})
    out, calls = _run(bundle, work, "ensemble", ensemble_checkpoints=[model, model], fast_cpu=False, **post)
    assert calls == [bundle_work["calls_per_pass"]] * 2
    assert out.shape == plain.shape
    if bundle in ("cohra_unet_brats", "mtcm_kd_t1ce_student"):
        # a threshold above the volume's size: every enhancing-tumour voxel becomes necrosis, nothing else moves
        assert (plain == ET_LABEL).any(), "precondition: the random network predicts some enhancing tumour"
        expected = np.where(plain == ET_LABEL, 1, plain)
        np.testing.assert_array_equal(out, expected)
    elif bundle == "refnet_synapse":
        from common.transforms.postprocessing import KeepLargestComponentPerLabel

        expected = KeepLargestComponentPerLabel(range(1, 13))(plain[None])[0]
        assert (expected != plain).any(), "precondition: the random RefNet leaves stray islands"
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_array_equal(out, plain)


def test_bundle_ensemble_of_two_folds_with_mirroring(bundle_work):
    """Two checkpoints, each run once per mirroring, through the bundle's fast_cpu path (on by default)."""
    bundle, work = bundle_work["bundle"], bundle_work["work"]
    checkpoints = [str(work / "models" / "model.pt"), str(work / "models" / "fold1.pt")]
    out, calls = _run(bundle, work, "tta", ensemble_checkpoints=checkpoints, tta_mirroring=True)
    assert calls == [bundle_work["calls_per_pass"] * MIRROR_PASSES[bundle]] * 2
    assert out.shape == bundle_work["plain"].shape and out.max() <= (12 if bundle == "refnet_synapse" else 4)


def test_bundle_names_a_missing_ensemble_checkpoint(bundle_work):
    bundle, work = bundle_work["bundle"], bundle_work["work"]
    missing = work / "models" / "fold7.pt"
    workflow = _workflow(bundle, work, output_dir=str(work / "missing"), ensemble_checkpoints=[str(missing)])
    with pytest.raises(Exception) as caught:
        workflow.initialize()
        workflow.run()
    message = bad_input_message(caught.value)
    assert message is not None and f"'{missing}'" in message
    assert not (work / "missing").exists() or not any((work / "missing").iterdir())
