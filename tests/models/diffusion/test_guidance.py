"""Conditioning dropout and classifier-free guidance around the UNet."""

from __future__ import annotations

import torch

from main.models.diffusion.guidance import ConditionedDenoiser, class_labels_for
from main.models.diffusion.unet import build_unet


def tiny_unet(num_classes=None, formulation="form1"):
    torch.manual_seed(0)
    unet = build_unet(
        "small",
        formulation,
        image_size=8,
        channel_mult=(1, 2),
        attention_resolutions=(4,),
        model_channels=8,
        norm_groups=4,
        image_channels=1,
        num_classes=num_classes,
    )
    for p in unet.parameters():  # random, non-zero output layer so outputs depend on every input
        torch.nn.init.normal_(p, std=0.1)
    return unet.eval()


def test_class_labels_map_missing_labels_to_the_null_class():
    unet = tiny_unet(num_classes=10)
    assert class_labels_for(unet, torch.tensor([3, -1, 0]), 3, "cpu").tolist() == [3, 10, 0]
    assert class_labels_for(unet, None, 2, "cpu").tolist() == [10, 10]
    assert class_labels_for(tiny_unet(), torch.tensor([1]), 1, "cpu") is None


def test_dropping_zeroes_y_and_nulls_the_label_only_where_asked():
    unet = tiny_unet(num_classes=10)
    inputs, t = torch.randn(4, 2, 8, 8), torch.tensor([5, 5, 5, 5])
    labels = torch.tensor([1, 2, 3, 4])
    keep = torch.tensor([True, False, True, False])
    dropped = ConditionedDenoiser(unet, labels, keep)(inputs, t)
    by_hand_input = inputs.clone()
    by_hand_input[~keep, 1:] = 0
    by_hand = unet(by_hand_input, t, torch.tensor([1, 10, 3, 10]))
    torch.testing.assert_close(dropped, by_hand)
    assert not torch.allclose(dropped[1], unet(inputs, t, labels)[1])


def test_guidance_extrapolates_from_the_unconditional_output():
    unet = tiny_unet(num_classes=10)
    inputs, t, labels = torch.randn(3, 2, 8, 8), torch.tensor([7, 7, 7]), torch.tensor([0, 5, 9])
    w = 2.5
    cond = unet(inputs, t, labels)
    null_input = torch.cat([inputs[:, :1], torch.zeros_like(inputs[:, 1:])], 1)
    uncond = unet(null_input, t, torch.full((3,), 10))
    guided = ConditionedDenoiser(unet, labels, guidance=w)(inputs, t)
    torch.testing.assert_close(guided, cond + w * (cond - uncond), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ConditionedDenoiser(unet, labels, guidance=0.0)(inputs, t), cond)


def test_an_unconditional_unet_with_guidance_only_drops_the_label():
    unet = tiny_unet(num_classes=3, formulation="unconditional")
    inputs, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([1, 1]), torch.tensor([0, 2])
    cond, uncond = unet(inputs, t, labels), unet(inputs, t, torch.tensor([3, 3]))
    torch.testing.assert_close(ConditionedDenoiser(unet, labels, guidance=1.0)(inputs, t), 2 * cond - uncond, rtol=1e-4, atol=1e-5)
