"""Choi et al. 2023 single-stage KD trainer: gradient routing, latent features, one epoch, students on one or several
modalities, bad configurations."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from common.engines.choi_kd import ChoiKDTrainer, forward_with_latent
from common.engines.distillation import DistillationTrainer
from common.losses.distillation import BarlowTwinsLoss
from common.networks.cohra_unet import mtcm_kd_backbone

CHANNELS = (8, 16, 32, 64)  # three downsamplings: 16^3 inputs give a 2^3 x 64 bottleneck
SIZE = 16
MODALITIES = 4
STUDENT_CHANNEL = 1
FLAIR, T1CE = 3, 1  # the bundle's channel order: T1, T1ce, T2, FLAIR


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Two threads per process are several times slower than one on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_loader(cases: int = 2, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = [
        {
            "image": torch.randn(MODALITIES, SIZE, SIZE, SIZE, generator=g),
            "label": torch.randint(0, 4, (1, SIZE, SIZE, SIZE), generator=g).float(),
        }
        for _ in range(cases)
    ]
    return DataLoader(data, batch_size=2, shuffle=False)


def make_trainer(seed: int = 0, student_channel: int | list[int] = STUDENT_CHANNEL, **kwargs) -> ChoiKDTrainer:
    torch.manual_seed(seed)
    reads = len(student_channel) if isinstance(student_channel, list) else 1
    student = mtcm_kd_backbone(in_channels=reads, channels=CHANNELS)
    teacher = mtcm_kd_backbone(in_channels=MODALITIES, channels=CHANNELS)
    return ChoiKDTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=make_loader(),
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-3),
        teacher=teacher,
        teacher_optimizer=torch.optim.Adam(teacher.parameters(), lr=1e-3),
        student_channel=student_channel,
        **kwargs,
    )


def student_inputs(trainer: ChoiKDTrainer) -> list[torch.Tensor]:
    """Every input the student network is called with from now on, as it reaches its ``forward``."""
    seen: list[torch.Tensor] = []
    trainer.network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    data = next(iter(make_loader()))
    return data["image"], data["label"]


def grads(loss: torch.Tensor, module: nn.Module) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, list(module.parameters()), retain_graph=True, allow_unused=True))


def nonzero(gradients: list[torch.Tensor | None]) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in gradients)


def test_latent_features_are_the_bottleneck_output() -> None:
    net = mtcm_kd_backbone(in_channels=1, channels=CHANNELS).eval()
    x = torch.randn(1, 1, SIZE, SIZE, SIZE)
    out, latent = forward_with_latent(net, x, "bottleneck")
    expected = net.stem(x)
    for stage in net.encoder:
        expected = stage(expected)
    expected = net.bridge(expected)
    assert latent.shape == (1, CHANNELS[-1], SIZE // 8, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(latent, expected)
    torch.testing.assert_close(out, net(x))
    assert not net.bottleneck._forward_hooks, "the hook must be removed after the forward"
    with pytest.raises(AttributeError, match="no submodule 'latent'"):
        forward_with_latent(net, x, "latent")


def test_student_loss_reaches_the_teacher_only_through_barlow_twins_when_asked() -> None:
    image, label = batch()
    trainer = make_trainer()
    losses = trainer.compute_losses(image, label)
    # the default transfers teacher -> student: no gradient of L_S in the teacher, none of L_T in the student
    assert not nonzero(grads(losses.student_loss, trainer.teacher))
    assert not nonzero(grads(losses.teacher_loss, trainer.network))
    assert nonzero(grads(losses.student_loss, trainer.network)) and nonzero(grads(losses.teacher_loss, trainer.teacher))

    symmetric = make_trainer(barlow_twins_updates_teacher=True)
    losses = symmetric.compute_losses(image, label)
    assert nonzero(grads(losses.student_loss, symmetric.teacher))  # only the Barlow Twins term links them
    assert not nonzero(grads(losses.teacher_loss, symmetric.network))


def test_losses_add_up_from_their_terms() -> None:
    image, label = batch()
    trainer = make_trainer(barlow_twins_weight=0.1)
    losses = trainer.compute_losses(image, label)
    t = losses.terms
    expected = t["student_seg_loss"] + t["deep_supervision_loss"] + 0.1 * t["barlow_twins_loss"]
    torch.testing.assert_close(losses.student_loss.detach(), expected)
    assert t["teacher_loss"] > t["teacher_seg_loss"] > 0  # the teacher's own deep-supervision CE is in L_T
    _, z_s = forward_with_latent(trainer.network, image[:, 1:2], "bottleneck")
    _, z_t = forward_with_latent(trainer.teacher, image, "bottleneck")
    torch.testing.assert_close(t["barlow_twins_loss"], BarlowTwinsLoss()(z_s, z_t).detach())


def test_one_epoch_trains_both_networks_and_publishes_the_terms() -> None:
    trainer = make_trainer(decollate=False)
    before_s = [p.detach().clone() for p in trainer.network.parameters()]
    before_t = [p.detach().clone() for p in trainer.teacher.parameters()]
    trainer.run()
    assert any(not torch.equal(p, q) for p, q in zip(trainer.network.parameters(), before_s, strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(trainer.teacher.parameters(), before_t, strict=True))
    out = trainer.state.output
    for key in ("loss", "student_seg_loss", "deep_supervision_loss", "barlow_twins_loss", "teacher_loss"):
        assert torch.isfinite(out[key]), key
    assert out["pred"].shape == (2, 4, SIZE, SIZE, SIZE)
    items = trainer.checkpoint_items()
    assert list(items) == ["network", "optimizer", "trainer", "teacher_0", "teacher_optimizer"]
    assert list(trainer.checkpoint_items(student=False)) == ["teacher_0", "teacher_optimizer"]
    assert items["teacher_0"] is trainer.teacher and items["network"] is trainer.network


def test_a_student_on_flair_and_t1ce_reads_those_channels_in_that_order() -> None:
    """The paper's student: image channels FLAIR (3) then T1ce (1), not the image's own order (T1ce before FLAIR)."""
    trainer = make_trainer(student_channel=[FLAIR, T1CE], decollate=False)
    assert trainer.student_channels == [FLAIR, T1CE] and trainer.student_channel == [FLAIR, T1CE]
    seen = student_inputs(trainer)
    trainer.run()  # one iteration of the real loop: _iteration -> compute_losses -> the student's forward
    image, _ = batch()
    assert len(seen) == 1 and seen[0].shape == (2, 2, SIZE, SIZE, SIZE)
    torch.testing.assert_close(seen[0][:, 0], image[:, FLAIR])
    torch.testing.assert_close(seen[0][:, 1], image[:, T1CE])
    assert not torch.equal(seen[0], image[:, [T1CE, FLAIR]])
    assert trainer.state.output["pred"].shape == (2, 4, SIZE, SIZE, SIZE)
    assert torch.isfinite(trainer.state.output["barlow_twins_loss"])


def test_one_student_channel_as_an_index_or_a_list_is_the_same_trainer() -> None:
    """``student_channel: [1]`` (the bundle's T1ce-only Choi variant) is ``student_channel: 1``: same attribute, same
    input tensor, same losses."""
    image, label = batch()
    as_index, as_list = make_trainer(student_channel=T1CE), make_trainer(student_channel=[T1CE])
    assert as_index.student_channel == as_list.student_channel == T1CE
    assert as_index.student_channels == as_list.student_channels == [T1CE]
    seen_index, seen_list = student_inputs(as_index), student_inputs(as_list)
    index_losses, list_losses = as_index.compute_losses(image, label), as_list.compute_losses(image, label)
    assert torch.equal(seen_index[0], seen_list[0]) and torch.equal(seen_index[0], image[:, T1CE : T1CE + 1])
    for key, value in index_losses.terms.items():
        assert torch.equal(value, list_losses.terms[key]), key


def test_shares_the_distillation_base_and_not_the_mtcm_kd_module() -> None:
    assert issubclass(ChoiKDTrainer, DistillationTrainer)
    code = "import sys, common.engines.choi_kd; print('common.engines.mtcm_kd' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_bad_configurations_are_named() -> None:
    student = mtcm_kd_backbone(in_channels=1, channels=CHANNELS)
    teacher = mtcm_kd_backbone(in_channels=MODALITIES, channels=CHANNELS)
    adam = torch.optim.Adam
    common = dict(device="cpu", max_epochs=1, train_data_loader=make_loader(), network=student, student_channel=1)
    with pytest.raises(ValueError, match="student optimizer holds teacher"):
        ChoiKDTrainer(
            optimizer=adam([*student.parameters(), *teacher.parameters()]),
            teacher=teacher,
            teacher_optimizer=adam(teacher.parameters()),
            **common,
        )
    with pytest.raises(ValueError, match="not in teacher_optimizer"):
        ChoiKDTrainer(
            optimizer=adam(student.parameters()),
            teacher=teacher,
            teacher_optimizer=adam(list(teacher.parameters())[:3]),
            **common,
        )
    trainer = ChoiKDTrainer(
        optimizer=adam(student.parameters()),
        teacher=teacher,
        teacher_optimizer=adam(teacher.parameters()),
        deep_supervision_weights=(0.5, 0.25, 0.125),
        **common,
    )
    with pytest.raises(ValueError, match="2 deep-supervision output"):
        trainer.run()
    with pytest.raises(ValueError, match=r"student network reads 1 channel\(s\), but student_channel \[3, 1\] gives 2"):
        ChoiKDTrainer(
            optimizer=adam(student.parameters()),
            teacher=teacher,
            teacher_optimizer=adam(teacher.parameters()),
            **{**common, "student_channel": [FLAIR, T1CE]},
        )
    with pytest.raises(ValueError, match="lists no channel"):
        ChoiKDTrainer(
            optimizer=adam(student.parameters()),
            teacher=teacher,
            teacher_optimizer=adam(teacher.parameters()),
            **{**common, "student_channel": []},
        )
