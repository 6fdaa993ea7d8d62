"""Diffusion UNet: shapes, attention placement (in pixels), class embedding, presets' parameter counts, fitting."""

from __future__ import annotations

import collections

import pytest
import torch

from main.models.diffusion.gaussian_diffusion import GaussianDiffusion
from main.models.diffusion.schedules import get_beta_schedule
from main.models.diffusion.unet import UNET_PRESETS, SkipConcat, UNet, build_unet
from main.models.diffusion.unet_blocks import AttentionBlock, timestep_embedding
from main.utils.errors import UserError


def randomise_(model, seed=0):
    """Replace every parameter (including the zero-initialised ones) with small noise, so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def tiny(**kw):
    args = dict(
        image_size=16,
        in_channels=6,
        out_channels=3,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_heads=2,
    )
    args.update(kw)
    return UNet(**args)


@pytest.mark.parametrize("in_ch,out_ch", [(6, 3), (3, 3), (2, 1)])
def test_output_shape(in_ch, out_ch):
    torch.manual_seed(0)
    model = randomise_(tiny(in_channels=in_ch, out_channels=out_ch)).eval()
    x = torch.randn(2, in_ch, 16, 16)
    assert model(x, torch.tensor([0, 999])).shape == (2, out_ch, 16, 16)


@pytest.mark.parametrize(
    "attn,expected",
    [
        ((16,), {16: 3, 4: 1}),  # 1 down block + 2 up blocks at 16 px, plus the middle block at the bottom (4 px)
        ((32, 8), {32: 3, 8: 3, 4: 1}),
        ((4,), {4: 3 + 1}),
        ((), {4: 1}),
    ],
)
def test_attention_at_requested_pixel_resolutions(attn, expected):
    model = UNet(32, 6, 3, 32, (1, 2, 2, 2), 1, attn)
    seen = collections.Counter()
    for m in model.modules():
        if isinstance(m, AttentionBlock):
            m.register_forward_hook(lambda mod, inp, out: seen.update([inp[0].shape[-1]]))
    model(torch.randn(1, 6, 32, 32), torch.tensor([3]))
    assert dict(seen) == expected


@pytest.mark.parametrize("attn", [(2,), (12,), (64,), (16, 3)])
def test_bad_attention_resolution_is_user_error(attn):
    with pytest.raises(UserError, match=r"choose from \[32, 16, 8, 4\]"):
        UNet(32, 6, 3, 32, (1, 2, 2, 2), 1, attn)


def test_bad_image_size_and_preset_are_user_errors():
    with pytest.raises(UserError, match="divisible"):
        UNet(36, 6, 3, 32, (1, 2, 2, 2), 1, ())
    with pytest.raises(UserError, match="cifar10"):
        build_unet("imagenet")
    with pytest.raises(UserError, match="form1"):
        build_unet("small", "form3")


def test_class_embedding_changes_output():
    model = randomise_(tiny(num_classes=3)).eval()
    x, t = torch.randn(1, 6, 16, 16), torch.tensor([10])
    outs = [model(x, t, torch.tensor([c])) for c in range(3)] + [model(x, t)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(outs[i], outs[j], atol=1e-4), (i, j)
    torch.testing.assert_close(outs[3], model(x, t, torch.tensor([3])))  # None means the null class
    with pytest.raises(ValueError):
        tiny()(x, t, torch.tensor([0]))


def test_time_embedding_matters_and_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0.0, 5.0]), 6)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    torch.testing.assert_close(emb[1, [0, 3]], torch.tensor([torch.cos(torch.tensor(5.0)), torch.sin(torch.tensor(5.0))]))
    model = randomise_(tiny()).eval()
    x = torch.randn(1, 6, 16, 16)
    assert not torch.allclose(model(x, torch.tensor([1])), model(x, torch.tensor([500])), atol=1e-4)


# DiffuseVAE's reported sizes (Table: "35.75M with attention at 16 px; 34.43M without") and the reduced CPU UNet.
EXPECTED_MILLIONS = {
    "cifar10": 35.75,
    "cifar10_no_attn": 34.43,
    "celeba64": 82.64,
    "celebahq128": 95.17,
    "ffhq128": 87.90,
    "celebahq256": 113.68,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MILLIONS) + ["small"])
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        model = build_unet(name, "form1")
    n = sum(p.numel() for p in model.parameters())
    if name == "small":
        assert n == 1_114_819
    else:
        assert round(n / 1e6, 2) == EXPECTED_MILLIONS[name]


def test_unconditional_preset_has_image_channels_in():
    with torch.device("meta"):
        assert build_unet("small", "unconditional").in_channels == UNET_PRESETS["small"].image_channels
        assert build_unet("small", "form2").in_channels == 2 * UNET_PRESETS["small"].image_channels


@pytest.mark.parametrize("form,pred", [("form2", "eps"), ("form1", "v")])
def test_training_loss_decreases_on_a_fixed_batch(form, pred):
    torch.manual_seed(0)
    d = GaussianDiffusion(get_beta_schedule("linear", 100), form, pred)
    model = UNet(8, 6, 3, 32, (1, 2), 1, (4,), dropout=0.0)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    y = x0 + 0.2 * torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([5, 30, 60, 95])
    noise = torch.randn(4, 3, 8, 8, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = d.training_loss(model, x0, y, t=t, noise=noise)
        assert loss.shape == (4,)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_loss_random_t_is_seeded():
    d = GaussianDiffusion(get_beta_schedule("linear", 100), "unconditional")
    model = lambda x, t: x * t.float().reshape(-1, 1, 1, 1) / 100
    x0 = torch.zeros(3, 1, 2, 2)
    a, b, c = (d.training_loss(model, x0, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_skip_concat_is_cat_with_a_gradient_of_its_own_for_the_skip():
    """Same values and gradients as torch.cat; the skip's gradient is not a view that keeps the concatenated one alive."""
    h = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(SkipConcat.apply(h, skip), torch.cat([h, skip], dim=1))
    assert torch.autograd.gradcheck(SkipConcat.apply, (h, skip))
    grad = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    grad_h, grad_skip = SkipConcat.backward(type("Ctx", (), {"split": 3})(), grad)
    torch.testing.assert_close(grad_skip, grad[:, 3:])
    assert grad_skip.untyped_storage().data_ptr() != grad.untyped_storage().data_ptr()
    assert grad_skip.untyped_storage().nbytes() == grad_skip.numel() * grad_skip.element_size()
