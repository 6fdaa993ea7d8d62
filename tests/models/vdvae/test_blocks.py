"""Block strings, their consistency checks, per-resolution widths and the bottleneck block."""

from __future__ import annotations

import pytest
import torch
from helpers import user_error

from main.models.vdvae.blocks import (
    BlockSpec,
    Bottleneck,
    check_decoder_blocks,
    check_encoder_blocks,
    parse_block_string,
    parse_widths,
)


# ---- parsing -------------------------------------------------------------------------------------------
def test_encoder_string_expands_counts_and_down_rates():
    """'32x3,32d2,16x2' is three blocks at 32, one at 32 pooling by 2, two at 16."""
    blocks = parse_block_string("32x3,32d2,16x2", "encoder")
    assert blocks == [BlockSpec(32)] * 3 + [BlockSpec(32, down_rate=2)] + [BlockSpec(16)] * 2


def test_decoder_string_expands_mixins_and_single_blocks():
    blocks = parse_block_string("1x1,4m1,4x2,8m4,8", "decoder")
    assert blocks == [BlockSpec(1), BlockSpec(4, mixin=1), BlockSpec(4), BlockSpec(4), BlockSpec(8, mixin=4), BlockSpec(8)]


def test_spaces_are_ignored():
    assert parse_block_string(" 8x2, 8d4 ,2", "encoder") == parse_block_string("8x2,8d4,2", "encoder")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("entry", ["32y3", "", "x3", "32x", "3 2x-1", "32x3x2", "a", "32,,16"])
def test_malformed_entry_is_a_user_error(kind, entry):
    message = user_error(parse_block_string, entry, kind)
    assert f"bad {kind} block string entry" in message
    assert "RxN" in message  # names the accepted forms


@pytest.mark.parametrize("spec", ["32x0", "0x3", "0"])
def test_zero_count_or_resolution_is_a_user_error(spec):
    assert "must be positive" in user_error(parse_block_string, spec, "encoder")


def test_downsample_in_a_decoder_is_a_user_error():
    message = user_error(parse_block_string, "1x1,16d2", "decoder")
    assert "'16d2'" in message and "uses 'd'" in message


def test_mixin_in_an_encoder_is_a_user_error():
    message = user_error(parse_block_string, "32x1,16m8", "encoder")
    assert "'16m8'" in message and "uses 'm'" in message


@pytest.mark.parametrize("entry", ["32d3", "10d4"])
def test_non_divisible_down_rate_is_a_user_error(entry):
    assert "is not divisible by" in user_error(parse_block_string, entry, "encoder")


@pytest.mark.parametrize("entry", ["8m8", "8m16", "8m3"])
def test_mixin_not_a_lower_divisor_is_a_user_error(entry):
    assert "must be a multiple of, and above" in user_error(parse_block_string, f"1x1,{entry}", "decoder")


# ---- consistency checks --------------------------------------------------------------------------------------
ENC = "8x1,8d2,4x1,4d4,1x1"
ENC_RESOLUTIONS = {8, 4, 1}


def test_consistent_strings_pass_the_checks():
    check_encoder_blocks(parse_block_string(ENC, "encoder"), 8)
    check_decoder_blocks(parse_block_string("1x1,4m1,4x1,8m4,8x1", "decoder"), 8, ENC_RESOLUTIONS)


@pytest.mark.parametrize("enc,image_size", [("16x1,16d2,8x1", 8), (ENC, 16), ("8x1,8d2,8x1", 8), ("8x1,8d2,2x1", 8)])
def test_encoder_must_start_at_the_image_size_and_follow_its_pools(enc, image_size):
    message = user_error(check_encoder_blocks, parse_block_string(enc, "encoder"), image_size)
    assert "enc_blocks must start at the image size" in message


def test_decoder_resolution_without_encoder_activation_is_a_user_error():
    message = user_error(check_decoder_blocks, parse_block_string("1x1,2m1,8m2", "decoder"), 8, ENC_RESOLUTIONS)
    assert "decoder block at resolution 2 has no encoder activation" in message


def test_decoder_must_end_at_the_image_size():
    message = user_error(check_decoder_blocks, parse_block_string("1x1,4m1,4x1", "decoder"), 8, ENC_RESOLUTIONS)
    assert "dec_blocks end at resolution 4" in message and "8x8" in message


def test_mixin_from_an_unseen_resolution_is_a_user_error():
    message = user_error(check_decoder_blocks, parse_block_string("1x1,8m4,8x1", "decoder"), 8, ENC_RESOLUTIONS)
    assert "8m4 upsamples resolution 4, which no earlier block produced" in message


# ---- widths ------------------------------------------------------------------------------------------------------
def test_custom_widths_override_the_default_per_resolution():
    widths = parse_widths(16, "512:32, 256:64")
    assert (widths[512], widths[256], widths[8], widths[1]) == (32, 64, 16, 16)


@pytest.mark.parametrize("custom", [None, "", " "])
def test_no_custom_widths_means_the_default_everywhere(custom):
    widths = parse_widths(48, custom)
    assert all(widths[r] == 48 for r in (1, 4, 32, 1024))


@pytest.mark.parametrize("custom", ["512-32", "512", "a:b", "512:32:1", "512:"])
def test_bad_custom_widths_are_a_user_error(custom):
    message = user_error(parse_widths, 16, custom)
    assert "bad custom_widths entry" in message and "resolution:width" in message


# ---- bottleneck block ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution,kernel", [(1, 1), (2, 1), (4, 3), (8, 3)])
def test_inner_convolutions_are_1x1_at_resolutions_1_and_2(resolution, kernel):
    block = Bottleneck(8, 2, 8, resolution)
    assert block.c2.kernel_size == (kernel, kernel) and block.c3.kernel_size == (kernel, kernel)


def test_zero_last_block_outputs_zero_and_residual_block_is_identity_then():
    """A zero-initialised last conv makes the branch output 0, so a residual block starts as the identity."""
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(Bottleneck(8, 2, 6, 4, zero_last=True)(x), torch.zeros(2, 6, 4, 4))
    residual = Bottleneck(8, 2, 8, 4, residual=True, zero_last=True)
    torch.testing.assert_close(residual(x), x)


def test_down_rate_average_pools_the_output():
    """With a zero branch, a residual block with down_rate 2 is plain 2x2 average pooling."""
    x = torch.randn(1, 4, 8, 8)
    out = Bottleneck(4, 1, 4, 8, residual=True, down_rate=2, zero_last=True)(x)
    torch.testing.assert_close(out, x.view(1, 4, 4, 2, 4, 2).mean(dim=(3, 5)))


def test_last_scale_scales_the_last_conv_weights():
    torch.manual_seed(0)
    a = Bottleneck(8, 4, 8, 4)
    torch.manual_seed(0)
    b = Bottleneck(8, 4, 8, 4, last_scale=0.25)
    torch.testing.assert_close(b.c4.weight, 0.25 * a.c4.weight)
    torch.testing.assert_close(b.c1.weight, a.c1.weight)
