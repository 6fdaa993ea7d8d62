"""Properties of the discretized mixture of logistics (PixelCNN++ likelihood of VDVAE).

The reference probabilities here are computed independently, in float64, with torch.distributions:
a logistic is TransformedDistribution(Uniform(0, 1), [SigmoidTransform().inv, AffineTransform(loc, scale)]).
Raw parameters follow the layout documented in likelihood.py: K logits, then per image channel K means,
K log-scales and (colour only) K raw coefficients, where (PixelCNN++) the coefficients stored with
channel 0 / 1 / 2 are a / b / c in  mean_G += a * R,  mean_B += b * R + c * G.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import AffineTransform, SigmoidTransform, TransformedDistribution, Uniform

from main.models.vdvae.likelihood import DiscretizedMixtureLogistics, MixtureParams


# ---- independent reference -------------------------------------------------------------------------
def make_raw(channels, k, n=1, *, seed, mean=(-0.8, 0.8), log_scale=(-3.0, 0.0), coeff=(-1.5, 1.5), logit=2.0, logits=None):
    """Random raw parameters [n, P, 1, 1] for n pixels, plus the same values split by role (float64).

    ``logits`` (a list of K values) fixes the mixture logits of every pixel instead of drawing them.

    Returns (raw, parts) with parts = dict(logits [n,K], means [n,C,K], log_scales [n,C,K], coeffs [n,C,K] or None),
    coeffs already passed through tanh.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    logits = uniform(-logit, logit, n, k) if logits is None else torch.tensor(logits, dtype=torch.float64).expand(n, k)
    means = uniform(*mean, n, channels, k)
    log_scales = uniform(*log_scale, n, channels, k)
    raw_coeffs = uniform(*coeff, n, channels, k) if channels == 3 else None
    blocks = [logits]
    for c in range(channels):
        blocks += [means[:, c], log_scales[:, c]] + ([raw_coeffs[:, c]] if channels == 3 else [])
    raw = torch.cat(blocks, dim=1).float()[:, :, None, None]
    parts = dict(logits=logits, means=means, log_scales=log_scales, coeffs=torch.tanh(raw_coeffs) if raw_coeffs is not None else None)
    return raw, parts


def logistic(loc, scale):
    base = Uniform(torch.zeros_like(loc), torch.ones_like(loc), validate_args=False)
    return TransformedDistribution(base, [SigmoidTransform().inv, AffineTransform(loc, scale)], validate_args=False)


def bin_mass(dist, q, levels):
    """P(value falls in level q's bin); the end bins reach to -inf / +inf."""
    q = torch.as_tensor(q, dtype=torch.float64)
    v = 2 * q / levels - 1
    lo = torch.where(q == 0, torch.tensor(-math.inf, dtype=torch.float64), v - 1 / levels)
    hi = torch.where(q == levels, torch.tensor(math.inf, dtype=torch.float64), v + 1 / levels)
    return dist.cdf(hi) - dist.cdf(lo)


def reference_terms(parts, i, q, levels):
    """Per component: weight and per-channel bin masses [C, K] (float64) of the levels q at pixel i."""
    w = torch.softmax(parts["logits"][i], dim=0)  # [K]
    loc = parts["means"][i].clone()  # [C, K]
    scale = parts["log_scales"][i].exp()
    v = [2 * float(qc) / levels - 1 for qc in q]
    if parts["coeffs"] is not None:
        a, b, c = parts["coeffs"][i]
        loc[1] = loc[1] + a * v[0]
        loc[2] = loc[2] + b * v[0] + c * v[1]
    masses = torch.stack([bin_mass(logistic(loc[ch], scale[ch]), float(qc), levels) for ch, qc in enumerate(q)])
    return w, masses


def reference_prob(parts, i, q, levels):
    """Probability (float64) of the levels q (one per channel) at pixel i, from the raw parameters."""
    w, masses = reference_terms(parts, i, q, levels)
    return float((w * masses.prod(dim=0)).sum())


def float32_error_bound(parts, i, q, levels):
    """Relative error of p that float32 cdf differences (~1.2e-7 absolute per channel mass) can cause."""
    w, masses = reference_terms(parts, i, q, levels)
    terms = w * masses.prod(dim=0)
    return float((terms * (1.2e-7 / masses.clamp(min=1e-300)).sum(dim=0)).sum() / terms.sum())


def grid(q, levels):
    """Levels -> the [-1, 1] values the likelihood scores."""
    return torch.as_tensor(q, dtype=torch.float32) * (2.0 / levels) - 1.0


def head(channels, k, bits=8):
    return DiscretizedMixtureLogistics(width=1, channels=channels, num_mixtures=k, bits=bits)


def expand(raw, n):
    return raw.expand(n, -1, -1, -1)


# ---- normalisation ----------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("bits", [8, 5])
def test_rgb_probabilities_sum_to_one_over_all_colours(bits):
    """exp(log_prob) summed over every (R, G, B) of 2**bits levels per channel is 1 (K=3, random params)."""
    levels = 2**bits - 1
    n = levels + 1
    lik = head(3, 3, bits)
    raw, _ = make_raw(3, 3, seed=bits)
    v = grid(torch.arange(n), levels)
    gb = torch.stack(torch.meshgrid(v, v, indexing="ij")).reshape(2, 1, n * n)  # every (G, B)
    chunk = 8  # R values per evaluation: [1, 3, chunk, n*n] images, ~20 MB per intermediate
    total = torch.zeros((), dtype=torch.float64)
    for r0 in range(0, n, chunk):
        rs = v[r0 : r0 + chunk]
        x = torch.cat([rs.view(1, -1, 1).expand(1, -1, n * n), gb.expand(-1, len(rs), -1)])[None]
        params = MixtureParams(raw.expand(-1, -1, len(rs), n * n), 3, 3)
        total += lik.log_prob(params, x).double().exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("bits", [8, 5])
def test_grayscale_probabilities_sum_to_one(bits):
    """For several random grayscale pixels, the 2**bits level probabilities sum to 1."""
    levels = 2**bits - 1
    lik = head(1, 3, bits)
    raw, _ = make_raw(1, 3, n=5, seed=3)
    x = grid(torch.arange(levels + 1), levels).view(1, 1, 1, -1).expand(5, -1, -1, -1)
    params = MixtureParams(raw.expand(-1, -1, -1, levels + 1), 1, 3)
    totals = lik.log_prob(params, x).double().exp().sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones(5, dtype=torch.float64), atol=1e-3, rtol=0)


# ---- against the independent float64 reference ----------------------------------------------------
def _levels_near_modes(parts, n, levels, seed, per_pixel=5):
    """Per pixel, levels drawn near one component's (channel-shifted) means, so their masses are not tiny."""
    g = torch.Generator().manual_seed(seed)
    channels, k = parts["means"].shape[1:]
    out = []
    for i in range(n):
        for _ in range(per_pixel):
            j = int(torch.randint(k, (1,), generator=g))
            q, v = [], []
            for ch in range(channels):
                loc = float(parts["means"][i, ch, j])
                if parts["coeffs"] is not None and ch > 0:
                    a, b, c = parts["coeffs"][i, :, j].tolist()
                    loc += a * v[0] if ch == 1 else b * v[0] + c * v[1]
                val = loc + 0.5 * math.exp(float(parts["log_scales"][i, ch, j])) * float(torch.randn(1, generator=g))
                q.append(round((min(max(val, -1.0), 1.0) + 1) * levels / 2))
                v.append(2 * q[-1] / levels - 1)
            out.append((i, q))
    return out


def _compare_with_reference(lik, raw, parts, checks, levels):
    channels, k = parts["means"].shape[1:]
    idx = torch.tensor([i for i, _ in checks])
    x = grid(torch.tensor([q for _, q in checks]), levels)[:, :, None, None]
    got = lik.log_prob(MixtureParams(raw[idx], channels, k), x).double().exp().flatten()
    ref = torch.tensor([reference_prob(parts, i, q, levels) for i, q in checks], dtype=torch.float64)
    # compare where float32 rounding of the bin masses cannot reach a fifth of the tolerance
    keep = torch.tensor([float32_error_bound(parts, i, q, levels) < 2e-5 for i, q in checks])
    assert keep.sum() >= 0.8 * len(checks)
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-4, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("bits", [8, 5])
def test_log_prob_matches_torch_distributions_reference(channels, bits):
    """exp(log_prob) equals the float64 mixture of logistic bin masses, with PixelCNN++ channel dependence."""
    levels, n, k = 2**bits - 1, 8, 3
    # scales of 1/3 to 3 bins (8 bits: ~0.003 to 0.08), so bin masses are large enough for a float32 comparison
    log_scale = (-4.5, -2.5) if bits == 8 else (-2.5, -0.5)
    raw, parts = make_raw(channels, k, n, seed=11 + channels + bits, mean=(-0.9, 0.9), log_scale=log_scale)
    _compare_with_reference(head(channels, k, bits), raw, parts, _levels_near_modes(parts, n, levels, seed=5), levels)


@torch.no_grad()
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("bits", [8, 5])
def test_end_bins_match_reference(channels, bits):
    """The lowest and highest levels get the logistic's whole tail (-inf..first half-bin, last half-bin..+inf)."""
    levels, k = 2**bits - 1, 2
    lik = head(channels, k, bits)
    for lo, hi, q in [(-1.1, -0.98, 0), (0.98, 1.1, levels)]:
        raw, parts = make_raw(channels, k, 6, seed=int(q) + channels, mean=(lo, hi), log_scale=(-3.0, -1.5), coeff=(-0.05, 0.05))
        checks = [(i, [q] * channels) for i in range(6)]
        # mass at an end level is about one half or more per channel, far above a single interior bin's
        assert all(reference_prob(parts, i, qs, levels) > 0.05 for i, qs in checks)
        _compare_with_reference(lik, raw, parts, checks, levels)


@torch.no_grad()
def test_green_depends_on_red_through_the_coefficient():
    """With one component and a > 0, G is most probable at the level nearest m_G + a * R, for each R."""
    lik = head(3, 1)
    raw, parts = make_raw(3, 1, seed=2, coeff=(1.0, 1.5), mean=(-0.2, 0.2), log_scale=(-4.0, -4.0))
    raw[:, 9] = 0.0  # layout [logit, (m, log_s, coeff) x R, G, B]: c = tanh(0) = 0, so B's mean ignores G
    a = float(parts["coeffs"][0, 0, 0])
    m_g = float(parts["means"][0, 1, 0])
    levels = torch.arange(256)
    q_b = 128  # with c = 0 the factor of B is the same for every G at fixed R
    for q_r in (60, 128, 200):
        x = torch.stack([torch.full_like(levels, q_r), levels, torch.full_like(levels, q_b)], dim=1)
        lp = lik.log_prob(MixtureParams(expand(raw, 256), 3, 1), grid(x, 255)[:, :, None, None]).flatten()
        expected = round((min(max(m_g + a * float(grid(q_r, 255)), -1), 1) + 1) * 127.5)
        assert abs(int(lp.argmax()) - expected) <= 1


# ---- sampling ------------------------------------------------------------------------------------------
N_SAMPLES = 20000


def _exact_marginal(parts, channel, levels):
    """Exact marginal probabilities of one channel (R, or gray) of pixel 0 over all levels (float64)."""
    w = torch.softmax(parts["logits"][0], dim=0)
    q = torch.arange(levels + 1, dtype=torch.float64)[:, None]
    d = logistic(parts["means"][0, channel], parts["log_scales"][0, channel].exp())
    return (bin_mass(d, q, levels) * w).sum(dim=1)


@torch.no_grad()
@pytest.mark.parametrize("channels", [1, 3])
def test_samples_follow_the_exact_marginal(channels):
    """The histogram of 20000 sampled levels (gray, or R of RGB) is within TV 0.03 of the exact probabilities."""
    k = 2
    lik = head(channels, k)
    # weights 0.18 / 0.82, so that a wrong component choice shows
    raw, parts = make_raw(channels, k, seed=7, mean=(-0.6, 0.6), log_scale=(-4.5, -3.5), logits=[0.0, 1.5])
    params = MixtureParams(expand(raw, N_SAMPLES), channels, k)
    x = lik.sample(params, torch.Generator().manual_seed(0))
    assert x.shape == (N_SAMPLES, channels, 1, 1)
    assert x.min() >= -1 and x.max() <= 1
    counts = torch.bincount(lik.to_levels(x[:, 0]).flatten(), minlength=256).double()
    exact = _exact_marginal(parts, 0, 255)
    tv = 0.5 * (counts / N_SAMPLES - exact).abs().sum()
    assert float(tv) < 0.03


@torch.no_grad()
def test_rgb_samples_follow_the_exact_joint_at_low_bits():
    """Without channel coefficients, the 3-bit joint (R, G, B) histogram of 40000 samples matches exp(log_prob).

    (The shared mixture component correlates the channels; coefficients are tested separately below.)
    """
    bits, k, n = 3, 2, 40000
    levels = 2**bits - 1
    lik = head(3, k, bits)
    raw, _ = make_raw(3, k, seed=8, mean=(-0.5, 0.5), log_scale=(-2.5, -1.5), logits=[-0.5, 0.7])
    raw[:, [4, 7, 10, 13, 16, 17]] = 0.0  # the raw coefficients: [logits K, then per channel means K, log-scales K, coeffs K]
    x = lik.sample(MixtureParams(expand(raw, n), 3, k), torch.Generator().manual_seed(1))
    q = lik.to_levels(x).view(n, 3)
    counts = torch.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512).double()
    all_q = torch.cartesian_prod(*[torch.arange(levels + 1)] * 3)
    probs = lik.log_prob(MixtureParams(expand(raw, 512), 3, k), grid(all_q, levels)[:, :, None, None]).double().exp().flatten()
    assert 0.5 * float((counts / n - probs).abs().sum()) < 0.04


@torch.no_grad()
def test_green_given_red_level_follows_log_prob():
    """Among samples whose R lands on a level, G follows P(G | R level) as log_prob scores it.

    Setup (8 bits, K=1, a = tanh(5) ~ 1, b = c = 0): R sits 0.5 half-bins above a level with a tiny scale,
    and m_G + a * (R's level) is exactly a G bin boundary, so log_prob splits G 50/50 between the two
    levels there. A sampler that shifts G by a * (continuous R) instead puts ~80% on the upper one.
    """
    lik, n, L = head(3, 1), 20000, 255
    r_level, g_level = 100, 150
    r = float(grid(r_level, L))
    a = math.tanh(5.0)
    m_g = float(grid(g_level, L)) + 1 / L - a * r  # G's mean at R's level lies on the boundary of levels 150/151
    raw = torch.tensor([0.0, r + 0.5 / L, -7.0, 5.0, m_g, -7.0, 0.0, 0.0, -7.0, 0.0]).view(1, 10, 1, 1)
    x = lik.sample(MixtureParams(expand(raw, n), 3, 1), torch.Generator().manual_seed(3))
    q = lik.to_levels(x).view(n, 3)
    on_level = q[:, 0] == r_level
    assert on_level.float().mean() > 0.5
    upper_share = float((q[on_level, 1] == g_level + 1).float().mean())
    both = torch.tensor([[r_level, g_level, 128], [r_level, g_level + 1, 128]])
    p = lik.log_prob(MixtureParams(expand(raw, 2), 3, 1), grid(both, L)[:, :, None, None]).exp().flatten()
    model_share = float(p[1] / p.sum())
    assert model_share == pytest.approx(0.5, abs=0.02)  # the likelihood side of the setup
    assert upper_share == pytest.approx(model_share, abs=0.05), (upper_share, model_share)


@torch.no_grad()
def test_sampling_is_reproducible_with_a_generator():
    """The same generator seed gives the same samples; another seed gives others."""
    lik = head(3, 3)
    params = MixtureParams(expand(make_raw(3, 3, seed=1)[0], 64), 3, 3)
    a = lik.sample(params, torch.Generator().manual_seed(4))
    b = lik.sample(params, torch.Generator().manual_seed(4))
    c = lik.sample(params, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---- mean -------------------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("channels", [1, 3])
def test_mean_matches_monte_carlo_mean(channels):
    """mean() equals the average of 20000 samples (means well inside (-1, 1), small scales)."""
    k = 3
    lik = head(channels, k)
    raw, _ = make_raw(channels, k, seed=21, mean=(-0.4, 0.4), log_scale=(-4.0, -3.0), coeff=(-0.5, 0.5), logits=[-1.0, 0.0, 1.0])
    params = MixtureParams(expand(raw, N_SAMPLES), channels, k)
    mc = lik.sample(params, torch.Generator().manual_seed(2)).mean(dim=0).flatten()
    exact = lik.mean(MixtureParams(raw, channels, k)).flatten()
    torch.testing.assert_close(exact, mc, atol=0.02, rtol=0)


@torch.no_grad()
def test_mean_of_single_component_is_its_mean():
    """For K=1 the mean is (m_R, m_G + a m_R, m_B + b m_R + c E[G]); for gray it is m."""
    raw, parts = make_raw(3, 1, n=4, seed=3, mean=(-0.3, 0.3), coeff=(-0.5, 0.5))
    m, (a, b, c) = parts["means"][:, :, 0], parts["coeffs"][:, :, 0].T
    r = m[:, 0]
    g = m[:, 1] + a * r
    expected = torch.stack([r, g, m[:, 2] + b * r + c * g], dim=1)
    got = head(3, 1).mean(MixtureParams(raw, 3, 1))[:, :, 0, 0]
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)

    raw, parts = make_raw(1, 1, n=4, seed=4)
    got = head(1, 1).mean(MixtureParams(raw, 1, 1))[:, 0, 0, 0]
    torch.testing.assert_close(got.double(), parts["means"][:, 0, 0], atol=1e-6, rtol=0)


@torch.no_grad()
def test_mean_weights_components_by_softmax():
    """Gray, K=2: the mean is softmax(logits) . means."""
    raw, parts = make_raw(1, 2, n=3, seed=9, mean=(-0.5, 0.5))
    expected = (torch.softmax(parts["logits"], dim=1) * parts["means"][:, 0]).sum(dim=1)
    got = head(1, 2).mean(MixtureParams(raw, 1, 2)).flatten()
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


# ---- bits per dimension of known distributions -------------------------------------------------------------
@torch.no_grad()
def test_uniform_mixture_costs_eight_bits_per_dim():
    """256 equally weighted narrow logistics, one on each level, are ~uniform: every level costs ~8 bits."""
    lik = head(1, 256)
    centres = grid(torch.arange(256), 255)
    raw = torch.cat([torch.zeros(256), centres, torch.full((256,), -7.0)]).view(1, -1, 1, 1)
    x = centres.view(1, 1, 1, 256)
    params = MixtureParams(raw.expand(-1, -1, -1, 256), 1, 256)
    bits = lik.nll_per_dim(params, x) / math.log(2)
    assert float(bits) == pytest.approx(8.0, abs=0.05)


@torch.no_grad()
@pytest.mark.parametrize("log_scale", [-6.0, -5.0, -3.0])
def test_single_logistic_on_a_level_costs_its_bin_mass(log_scale):
    """A logistic centred on level 100 gives it mass tanh(1 / (2 L s)); nll_per_dim / ln 2 is -log2 of that."""
    lik = head(1, 1)
    centre = grid(100, 255)
    raw = torch.tensor([0.0, float(centre), log_scale]).view(1, 3, 1, 1)
    bits = lik.nll_per_dim(MixtureParams(raw, 1, 1), centre.view(1, 1, 1, 1)) / math.log(2)
    expected = -math.log2(math.tanh(1 / (2 * 255 * math.exp(log_scale))))
    assert float(bits) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_a_single_wide_logistic_is_not_uniform():
    """(Documents why the 8-bit check uses a mixture: one wide logistic puts ~half its mass in each end bin.)"""
    lik = head(1, 1)
    raw = torch.tensor([0.0, 0.0, 5.0]).view(1, 3, 1, 1)
    p_end = lik.log_prob(MixtureParams(raw, 1, 1), torch.full((1, 1, 1, 1), -1.0)).exp()
    assert float(p_end) > 0.45


# ---- parameter handling ----------------------------------------------------------------------------------------
def test_log_scales_are_clamped_at_minus_seven():
    """Log-scales below -7 are treated as -7 (VDVAE's floor), so tiny scales cannot give infinite likelihoods."""
    raw, _ = make_raw(1, 2, seed=1)
    low = raw.clone()
    low[:, 4:6] = -30.0
    floor = raw.clone()
    floor[:, 4:6] = -7.0
    x = torch.zeros(1, 1, 1, 1)
    lik = head(1, 2)
    assert torch.equal(lik.log_prob(MixtureParams(low, 1, 2), x), lik.log_prob(MixtureParams(floor, 1, 2), x))


def test_output_conv_has_the_documented_parameter_count():
    """RGB: K * 10 channels (VDVAE); gray: K * 3."""
    assert head(3, 5).out_conv.out_channels == 50
    assert head(1, 4).out_conv.out_channels == 12


def test_to_levels_rounds_to_the_nearest_level():
    """Values within half a bin of level q map to q; values outside [-1, 1] clamp to the end levels."""
    lik = head(1, 1, bits=5)
    q = torch.arange(32)
    v = grid(q, 31)
    assert torch.equal(lik.to_levels(v + 0.9 / 31), q)
    assert torch.equal(lik.to_levels(v - 0.9 / 31), q)
    assert lik.to_levels(torch.tensor([-3.0, 3.0])).tolist() == [0, 31]
