"""The one uint8 <-> [-1, 1] conversion every part of the project uses."""

from __future__ import annotations

import pytest
import torch

from main.utils.image_io import to_uint8, to_unit_range


def test_every_pixel_value_survives_the_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    unit = to_unit_range(pixels)
    assert unit.dtype == torch.float32 and unit.shape == pixels.shape
    assert unit.min() == -1 and unit.max() == 1 and unit.flatten()[128] == pytest.approx(1 / 255, abs=1e-6)
    assert torch.equal(to_uint8(unit), pixels)
    assert to_unit_range(pixels, torch.float64).dtype == torch.float64


def test_to_uint8_rounds_to_the_nearest_pixel_value_and_clamps():
    """(x + 1) * 127.5 is rounded to the nearest integer (not truncated); values outside [-1, 1] are clamped."""
    pixel_values = torch.tensor([0.4, 0.6, 1.4, 127.4, 127.6, 254.4, 254.6, 300.0, -40.0])
    out = to_uint8(pixel_values / 127.5 - 1)
    assert out.dtype == torch.uint8
    assert out.tolist() == [0, 1, 1, 127, 128, 254, 255, 255, 0]


def test_to_uint8_computes_in_float32_whatever_the_input_precision():
    x = torch.linspace(-1, 1, 1001)
    assert torch.equal(to_uint8(x.bfloat16()), to_uint8(x.bfloat16().float()))
    assert torch.equal(to_uint8(x.double()), to_uint8(x))
