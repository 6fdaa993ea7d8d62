"""HierarchicalVAE: ELBO terms, parameter counts of the published presets, sampling, reconstruction, latent space
and input checks, on tiny CPU configs (the presets are built on the meta device). The decoder's own behaviour (fixed
latents, class conditioning, guidance) is in test_decoder.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import user_error
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from main.models.vdvae import HierarchicalVAE
from main.utils.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "main" / "configs"

TINY = dict(
    image_size=8, width=16, zdim=4, num_mixtures=2,
    enc_blocks="8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4,8x1",
)  # fmt: skip


def tiny(channels=3, seed=0, perturb=True, **overrides) -> HierarchicalVAE:
    """A tiny model; with perturb, every parameter gets noise so that zero-initialised parts (the prior's
    last conv, label embeddings) are active and every output depends on every input it should."""
    torch.manual_seed(seed)
    model = HierarchicalVAE(**{**TINY, "channels": channels, **overrides})
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def images(n=3, channels=3, size=8, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- the negative ELBO -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("perturb", [False, True])
def test_forward_returns_consistent_per_sample_terms(channels, perturb):
    """loss, distortion, rate are [B]; kl_per_group is [B, G]; loss = distortion + rate; rate = sum of KLs >= 0."""
    model = tiny(channels, perturb=perturb)
    with torch.no_grad():
        elbo = model(images(3, channels))
    g = model.num_groups
    assert g == 5
    assert elbo.loss.shape == elbo.distortion.shape == elbo.rate.shape == (3,)
    assert elbo.kl_per_group.shape == (3, g)
    for t in (elbo.loss, elbo.distortion, elbo.rate, elbo.kl_per_group):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(elbo.loss, elbo.distortion + elbo.rate)
    torch.testing.assert_close(elbo.rate, elbo.kl_per_group.sum(dim=1))
    assert (elbo.kl_per_group >= 0).all() and (elbo.rate > 0).all()
    assert (elbo.distortion > 0).all()
    torch.testing.assert_close(elbo.bits_per_dim, elbo.loss / math.log(2))


def test_forward_uses_the_global_random_stream():
    """forward() draws z from torch's global generator: the same seed gives the same ELBO, another seed another."""
    model = tiny()
    x = images(2)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x).loss
        torch.manual_seed(1)
        b = model(x).loss
        torch.manual_seed(2)
        c = model(x).loss
    assert torch.equal(a, b) and not torch.equal(a, c)


def posterior_means_decoded(model, x):
    """The deterministic reconstruction: every group at its posterior mean, rendered as the likelihood's mean."""
    return model.sample(len(x), latents=model.encode_latents(x, temperature=0.0), output="mean")


def test_batch_elements_do_not_interact():
    """A deterministic reconstruction (posterior means, likelihood mean) of each image is the same alone as in a batch."""
    model = tiny()
    x = images(4)
    batch = posterior_means_decoded(model, x)
    alone = torch.cat([posterior_means_decoded(model, x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def set_head(model, bias):
    """Make the output head ignore the decoder features: raw mixture parameters = bias."""
    with torch.no_grad():
        model.likelihood.out_conv.weight.zero_()
        model.likelihood.out_conv.bias.copy_(bias)


def test_distortion_of_a_uniform_head_is_eight_bits_per_dim():
    """If the (grayscale) head puts 256 narrow equal-weight logistics on the 256 levels, every image costs
    ~ln 256 nats per dimension (the targets lie on the level grid)."""
    k = 256
    model = tiny(1, num_mixtures=k)
    set_head(model, torch.cat([torch.zeros(k), torch.arange(k) * (2 / 255) - 1, torch.full((k,), -7.0)]))
    with torch.no_grad():
        elbo = model(images(3, 1))
    torch.testing.assert_close(elbo.distortion / math.log(2), torch.full((3,), 8.0), atol=0.05, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_distortion_is_per_dimension(channels):
    """A head with one logistic of scale s on level 100 in every channel: an image of all 100s costs the
    bin's -log mass, -log tanh(1 / (2 * 255 * s)), per dimension, whatever the number of channels."""
    log_scale = -5.0
    per_channel = [torch.tensor([100 * 2 / 255 - 1]), torch.tensor([log_scale])] + ([torch.zeros(1)] if channels == 3 else [])
    model = tiny(channels, num_mixtures=1)
    set_head(model, torch.cat([torch.zeros(1)] + per_channel * channels))
    with torch.no_grad():
        elbo = model(torch.full((2, channels, 8, 8), 100, dtype=torch.uint8))
    expected = -math.log(math.tanh(1 / (2 * 255 * math.exp(log_scale))))
    torch.testing.assert_close(elbo.distortion, torch.full((2,), expected), rtol=1e-4, atol=1e-6)


def test_rate_is_zero_when_posteriors_equal_priors():
    """At init every prior is N(0, 1); zeroing the posterior's last conv makes each posterior N(0, 1) too, so every
    group's KL is 0. Perturbing one group's posterior makes exactly that group's KL positive."""
    model = tiny(1, perturb=False)
    with torch.no_grad():
        for block in model.decoder.blocks:
            block.posterior.c4.weight.zero_()
            block.posterior.c4.bias.zero_()
        x = images(2, 1)
        elbo = model(x)
        assert torch.equal(elbo.rate, torch.zeros(2))
        torch.testing.assert_close(elbo.loss, elbo.distortion, rtol=0, atol=0)
        model.decoder.blocks[2].posterior.c4.bias.normal_()
        kl = model(x).kl_per_group
    assert (kl[:, 2] > 0).all()
    assert torch.equal(kl[:, [0, 1, 3, 4]], torch.zeros(2, 4))


@pytest.mark.parametrize("channels", [1, 3])
def test_rate_of_known_posteriors_is_kl_per_dimension(channels):
    """With every prior N(0, 1) (init) and every posterior N(mu, s^2) (constant), group g's KL is
    zdim * res_g^2 * KL(N(mu, s^2) || N(0, 1)) divided by the C * H * W dimensions of an image."""
    mu, log_s = 0.7, -0.4
    model = tiny(channels, perturb=False)
    zdim = TINY["zdim"]
    with torch.no_grad():
        for block in model.decoder.blocks:
            block.posterior.c4.weight.zero_()
            block.posterior.c4.bias.copy_(torch.tensor([mu] * zdim + [log_s] * zdim))
        kl = model(images(2, channels)).kl_per_group
    kl_element = -log_s + (math.exp(2 * log_s) + mu**2) / 2 - 0.5
    resolutions = [1, 4, 4, 8, 8]  # TINY's dec_blocks, one group per block
    expected = torch.tensor([zdim * r * r * kl_element / (channels * 8 * 8) for r in resolutions])
    torch.testing.assert_close(kl, expected.expand(2, -1), rtol=1e-5, atol=0)


def test_gradient_reaches_every_parameter():
    """After one backward of loss.mean(), every parameter has a finite, non-zero gradient."""
    model = tiny(3, num_classes=3).train()
    model(images(2), torch.tensor([0, 2])).loss.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not bad


def test_gradient_reaches_zero_initialised_parts_at_init():
    """Even unperturbed (prior's last conv and label embeddings zero), no parameter is left without a gradient."""
    model = tiny(1, perturb=False, num_classes=2).train()
    model(images(2, 1), torch.tensor([1, -1])).loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the prior's zero last conv gets a gradient although its output is 0 (its weight only once the
    # state is non-zero: the first block starts from the zero-initialised learned state, as in VDVAE)
    assert all(b.prior.c4.bias.grad.abs().sum() > 0 for b in model.decoder.blocks)
    assert all(b.prior.c4.weight.grad.abs().sum() > 0 for b in model.decoder.blocks[1:])


# ---- importance-weighted bound --------------------------------------------------------------------------------
def elbo_draws(model, x, n) -> torch.Tensor:
    """[n, B] negative ELBOs (analytic KL; the distortion is a one-sample estimate, so average draws)."""
    with torch.no_grad():
        return torch.stack([torch.manual_seed(s) and model(x).loss for s in range(n)])


def test_one_sample_bound_is_an_unbiased_estimate_of_the_elbo():
    """With K = 1 the bound is the ELBO with the KL replaced by log q(z) - log p(z) at the draw: same mean."""
    model, x = tiny(), images(4)
    analytic = elbo_draws(model, x, 200)
    sampled = torch.stack([model.importance_weighted_nll(x, samples=1, generator=gen(s)) for s in range(200)])
    standard_error = (analytic.var(0) / len(analytic) + sampled.var(0) / len(sampled)).sqrt()
    assert torch.all((sampled.mean(0) - analytic.mean(0)).abs() < 4 * standard_error)


def test_bound_on_the_same_draws_tightens_as_k_grows():
    """On one stream of draws, log-mean-exp is concave: the K-sample bound is at most the mean of its K one-sample
    bounds, and the 2K-sample bound at most the mean of the bounds of its two halves (image by image)."""
    model, x = tiny(seed=1), images(6, seed=1)
    stream = gen(7)
    one_sample = torch.stack([model.importance_weighted_nll(x, samples=1, generator=stream) for _ in range(8)])
    four = model.importance_weighted_nll(x, samples=4, generator=gen(7))
    assert torch.all(four < one_sample[:4].mean(0))
    stream = gen(7)
    halves = torch.stack([model.importance_weighted_nll(x, samples=4, generator=stream) for _ in range(2)])
    torch.testing.assert_close(halves[0], four)
    assert torch.all(model.importance_weighted_nll(x, samples=8, generator=gen(7)) < halves.mean(0))


def test_bound_averages_whole_image_weights_not_per_dimension_ones():
    """-log mean_k exp(-D * l_k) / D, with l_k the one-sample negative ELBOs per dimension (D dimensions) of the same draws."""
    model, x = tiny(seed=1), images(4, seed=1)
    stream = gen(3)
    per_dim = torch.stack([model.importance_weighted_nll(x, samples=1, generator=stream) for _ in range(6)]).double()
    dims = x[0].numel()
    expected = -(torch.logsumexp(-dims * per_dim, dim=0) - math.log(6)) / dims
    torch.testing.assert_close(model.importance_weighted_nll(x, samples=6, generator=gen(3)).double(), expected, rtol=1e-6, atol=1e-6)


def test_bound_with_many_samples_is_below_the_elbo():
    """A posterior made too wide leaves a large ELBO gap that 32 importance samples visibly close."""
    model, x = tiny(seed=1), images(8, seed=1)
    with torch.no_grad():
        for block in model.decoder.blocks:
            block.posterior.c4.bias[block.zdim :] += 1.0  # log std of q up by 1
    elbo = elbo_draws(model, x, 32)
    bound = torch.stack([model.importance_weighted_nll(x, samples=32, generator=gen(s)) for s in range(4)])
    standard_error = (elbo.var() / elbo.numel() + bound.var() / bound.numel()).sqrt()
    assert bound.mean() < elbo.mean() - 4 * standard_error


def test_bound_is_reproducible_with_a_generator_and_needs_a_sample():
    model, x = tiny(), images(2)
    torch.testing.assert_close(
        model.importance_weighted_nll(x, samples=3, generator=gen(5)), model.importance_weighted_nll(x, samples=3, generator=gen(5))
    )
    assert "at least 1 sample" in user_error(model.importance_weighted_nll, x, samples=0)


def test_encoded_latents_decode_to_the_reconstruction():
    """Posterior draws fed back through `sample(latents=...)` give `reconstruct`'s with the same generator."""
    model, x = tiny(), images(3)
    latents = model.encode_latents(x, temperature=1.0, generator=gen(4))
    assert [tuple(z.shape) for z in latents] == model.latent_shapes(3)
    with torch.no_grad():
        decoded = model.sample(3, latents=latents, output="mean")
        direct = model.reconstruct(x, generator=gen(4), output="mean")
        torch.testing.assert_close(decoded, direct)
        assert not torch.allclose(
            model.sample(3, latents=[latents[0], *[None] * (len(latents) - 1)], output="mean", generator=gen(0)), direct
        )
    assert "latents has 1 entries" in user_error(model.sample, 3, latents=latents[:1])


# ---- parameter counts ---------------------------------------------------------------------------------------
def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_small_cpu_config_has_the_official_parameter_count():
    """552,274 parameters: openai/vdvae's VAE for the same hyperparameters has exactly this many."""
    model = HierarchicalVAE(
        image_size=32, channels=3, width=64, zdim=16, num_mixtures=5,
        enc_blocks="32x3,32d2,16x3,16d2,8x3,8d2,4x3,4d4,1x2",
        dec_blocks="1x1,4m1,4x2,8m4,8x3,16m8,16x3,32m16,32x3",
    )  # fmt: skip
    assert count(model) == 552_274


@pytest.fixture(scope="module")
def compose_train():
    """compose('dataset=...', 'vae=...') -> the train_ae config, as Hydra builds it for the entry point."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield lambda *overrides: compose(config_name="train_ae", overrides=list(overrides))


def build(cfg, device="meta") -> HierarchicalVAE:
    kwargs = OmegaConf.to_container(cfg.vae.model, resolve=True)
    with torch.device(device):
        return HierarchicalVAE(**kwargs)


@pytest.fixture
def no_init(monkeypatch):
    """Skip the random initialisation of layers (meta tensors hold no values anyway): halves build time."""
    for layer in (torch.nn.Conv2d, torch.nn.Embedding):
        monkeypatch.setattr(layer, "reset_parameters", lambda self: None)


# VDVAE's published models (paper / openai/vdvae): parameter counts.
PUBLISHED = {
    "cifar10": 39_145_700,
    "imagenet32": 119_280_868,
    "imagenet64": 125_005_860,
    "ffhq256": 114_874_852,
    "ffhq1024": 109_366_904,
}
SMALL_CPU = 552_274
# Presets that say (in their yaml) that they reuse another architecture: data set -> expected count.
SAME_ARCHITECTURE = {
    "afhq": PUBLISHED["imagenet64"],
    "celeba64": PUBLISHED["imagenet64"],
    "celebahq256": PUBLISHED["ffhq256"],
    "lsun_bedroom": PUBLISHED["ffhq256"],
    "lsun_church": PUBLISHED["ffhq256"],
    "npz": SMALL_CPU,
}
GENERIC_32PX = ["cifar10_cpu", "folder"]  # built with dataset=cifar10


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_presets_have_the_published_parameter_counts(compose_train, no_init, name):
    """dataset=<name> (the vae preset follows the data set) gives VDVAE's exact parameter count."""
    cfg = compose_train(f"dataset={name}")
    model = build(cfg)
    assert count(model) == PUBLISHED[name]
    assert (model.image_size, model.channels) == (cfg.dataset.image_size, cfg.dataset.channels)
    assert model.likelihood.levels == 2**cfg.dataset.bits - 1


@pytest.mark.parametrize("name", sorted(SAME_ARCHITECTURE))
def test_presets_reusing_an_architecture_build_with_their_data_set(compose_train, no_init, name):
    model = build(compose_train(f"dataset={name}"))
    assert count(model) == SAME_ARCHITECTURE[name]


@pytest.mark.parametrize("vae", GENERIC_32PX)
def test_generic_32px_presets_are_the_small_cpu_model(compose_train, no_init, vae):
    assert count(build(compose_train("dataset=cifar10", f"vae={vae}"))) == SMALL_CPU


def test_digits_preset_builds_and_runs(compose_train):
    """The quickstart preset builds for real and gives a finite ELBO on 8x8 grayscale images."""
    cfg = compose_train("dataset=digits")
    torch.manual_seed(0)
    model = build(cfg, device="cpu")
    with torch.no_grad():
        elbo = model(images(2, 1, 8))
    assert torch.isfinite(elbo.loss).all()


def test_class_conditional_imagenet256_is_ffhq256_plus_label_embeddings(compose_train, no_init):
    model = build(compose_train("dataset=imagenet256"))
    embeddings = sum(block.label_embedding.weight.numel() for block in model.decoder.blocks)
    assert model.num_classes == 1000 and count(model) - embeddings == PUBLISHED["ffhq256"]


# Latent-space presets: data set -> (preset, latent groups). Built as train_ae builds them, at latent resolution.
LATENT = {
    "imagenet256": ("imagenet256_latent", 46),
    "ffhq256": ("ffhq256_latent", 46),
    "lsun_church": ("lsun_church_latent", 46),
    "lsun_bedroom": ("lsun_bedroom_latent", 46),
    "cifar10": ("cifar10_latent_cpu", 11),
    "digits": ("digits_latent", 6),
}


@pytest.mark.parametrize("dataset", sorted(LATENT))
def test_latent_presets_build_at_latent_resolution(compose_train, no_init, dataset):
    preset, groups = LATENT[dataset]
    cfg = compose_train(f"dataset={dataset}", f"vae={preset}")
    assert cfg.vae.space == "latent" and cfg.vae.autoencoder
    size = {"digits": 4, "cifar10": 8}.get(dataset, 32)  # KL-f2 / KL-f4 (ours), KL-f8 (Stable Diffusion)
    overrides = {"image_size": size, "channels": 4, "likelihood": "gaussian"}
    with torch.device("meta"):
        model = HierarchicalVAE(**{**OmegaConf.to_container(cfg.vae.model, resolve=True), **overrides})
    assert model.num_groups == groups
    assert (model.num_classes > 0) == (dataset in ("imagenet256", "digits"))


def test_every_vae_preset_is_covered_above():
    presets = {p.stem for p in (CONFIG_DIR / "vae").glob("*.yaml")}
    covered = set(PUBLISHED) | set(SAME_ARCHITECTURE) | set(GENERIC_32PX) | {"digits", "imagenet256"}
    assert presets == covered | {preset for preset, _ in LATENT.values()}


def test_folder_data_set_works_with_its_default_preset(compose_train, no_init):
    build(compose_train("dataset=folder"))


# ---- input checks and targets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 8, 16), (2, 3, 4, 4), (3, 8, 8), (2, 3, 8, 8, 1)])
def test_check_images_rejects_other_shapes(shape):
    model = tiny(3, perturb=False)
    message = user_error(model.check_images, torch.zeros(shape, dtype=torch.uint8))
    assert "(3, 8, 8)" in message


def test_check_images_accepts_the_model_shape():
    tiny(3, perturb=False).check_images(torch.zeros(5, 3, 8, 8, dtype=torch.uint8))


def test_five_bit_targets_have_32_levels_from_minus_one_to_one():
    model = tiny(1, perturb=False, bits=5)
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    t = model.targets(x).flatten()
    assert float(t[0]) == -1.0 and float(t[-1]) == 1.0
    assert len(torch.unique(t)) == 32
    assert (t.diff() >= 0).all()
    # each level is 8 consecutive uint8 values, spaced 2/31 apart
    torch.testing.assert_close(torch.unique(t), torch.arange(32) * (2 / 31) - 1)
    assert torch.equal(t.view(32, 8), t.view(32, 8)[:, :1].expand(-1, 8))


def test_eight_bit_targets_round_trip_through_to_uint8():
    """targets() puts uint8 v at 2v/255 - 1; to_uint8 maps it back exactly."""
    model = tiny(1, perturb=False)
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    t = model.targets(x)
    torch.testing.assert_close(t, x.double().div(127.5).sub(1).float())
    assert torch.equal(model.to_uint8(t), x)


def test_five_bit_to_uint8_spreads_levels_over_0_255():
    model = tiny(1, perturb=False, bits=5)
    out = model.to_uint8(torch.linspace(-1, 1, 1000)).unique()
    assert len(out) == 32 and int(out[0]) == 0 and int(out[-1]) == 255


def test_floor_grid_keeps_vdvae_low_bit_pixel_values():
    """level_grid=floor: uint8 v scores at floor(v/8)*8/127.5 - 1 (VDVAE's 5-bit targets); to_uint8 gives floor(v/8)*8 back."""
    model = tiny(1, perturb=False, bits=5, level_grid="floor")
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    kept = torch.div(x, 8, rounding_mode="floor") * 8
    t = model.targets(x)
    torch.testing.assert_close(t, kept.double().div(127.5).sub(1).float())
    assert float(t.max()) == pytest.approx(248 / 127.5 - 1) and float(t.min()) == -1.0
    assert torch.equal(model.to_uint8(t), kept)
    assert torch.equal(model.likelihood.snap(t), t)  # targets are on the grid samples snap to


def test_grids_agree_at_eight_bits():
    spread, floor = tiny(1, perturb=False), tiny(1, perturb=False, level_grid="floor")
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(spread.targets(x), floor.targets(x))
    u = torch.linspace(-1, 1, 777)
    assert torch.equal(spread.to_uint8(u), floor.to_uint8(u))


def test_unknown_level_grid_is_a_user_error():
    assert "unknown level_grid" in user_error(tiny, level_grid="round")


# ---- sampling ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_sample_shape_range_and_uint8(channels):
    model = tiny(channels)
    x = model.sample(5, generator=gen(0))
    assert x.shape == (5, channels, 8, 8)
    assert x.min() >= -1 and x.max() <= 1
    u = model.to_uint8(x)
    assert u.dtype == torch.uint8 and u.shape == x.shape
    mean = model.sample(5, generator=gen(0), output="mean")
    assert mean.shape == x.shape and mean.min() >= -1 and mean.max() <= 1


def test_sampling_is_reproducible_with_a_generator():
    model = tiny()
    assert torch.equal(model.sample(3, generator=gen(1)), model.sample(3, generator=gen(1)))
    assert not torch.equal(model.sample(3, generator=gen(1)), model.sample(3, generator=gen(2)))


def test_temperature_zero_makes_the_latents_deterministic():
    """At temperature 0 every z is its prior mean: the likelihood mean does not depend on the generator
    (at temperature 1 it does, so the comparison can fail)."""
    model = tiny()
    a = model.sample(2, temperature=0.0, generator=gen(1), output="mean")
    b = model.sample(2, temperature=0.0, generator=gen(2), output="mean")
    assert torch.equal(a, b)
    assert torch.equal(a[0], a[1])  # and the same for every image of the batch
    c = model.sample(2, temperature=1.0, generator=gen(1), output="mean")
    d = model.sample(2, temperature=1.0, generator=gen(2), output="mean")
    assert not torch.allclose(c, d)


def test_per_group_temperatures():
    """A list gives one temperature per group; all zeros equals the scalar 0."""
    model = tiny()
    g = model.num_groups
    zeros = model.sample(2, temperature=[0.0] * g, generator=gen(1), output="mean")
    assert torch.equal(zeros, model.sample(2, temperature=0.0, generator=gen(3), output="mean"))
    # a non-zero temperature in one group only makes the result random again
    one = [0.0] * g
    one[0] = 1.0
    assert not torch.allclose(model.sample(2, temperature=one, generator=gen(1), output="mean"), zeros)


@pytest.mark.parametrize("temperature", [[1.0] * 4, [1.0] * 6, []])
def test_temperature_list_of_the_wrong_length_is_a_user_error(temperature):
    model = tiny(perturb=False)
    assert "5 latent groups" in user_error(model.sample, 2, temperature=temperature)


@pytest.mark.parametrize("temperature", [-0.1, 10.5, float("nan"), [1.0, 1.0, 11.0, 1.0, 1.0]])
def test_temperature_out_of_range_is_a_user_error(temperature):
    model = tiny(perturb=False)
    assert "must be in [0, 10]" in user_error(model.sample, 2, temperature=temperature)
    assert "must be in [0, 10]" in user_error(model.reconstruct, images(2), k=2, temperature=temperature)


def test_unknown_output_is_a_user_error():
    assert "unknown output 'median'" in user_error(tiny(perturb=False).sample, 1, output="median")


# ---- k: latent groups from the posterior -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "groups"),
    [(0, 0), (3, 3), (5, 5), ("all", 5), ("0px", 0), ("1px", 1), ("3px", 1), ("4px", 3), ("7px", 3), ("8px", 5), ("64px", 5)],
)
def test_groups_counts_integers_all_and_every_group_up_to_r_pixels(k, groups):
    """TINY's decoder "1x1,4m1,4x1,8m4,8x1" has one latent group per block, at resolutions [1, 4, 4, 8, 8]."""
    model = tiny(perturb=False)
    assert [shape[-1] for shape in model.latent_shapes(1)] == [1, 4, 4, 8, 8]
    assert model.groups(k) == groups


@pytest.mark.parametrize("k", [-1, 6, True, 2.0, "3", "some", "px", "4 px", None])
def test_a_bad_k_is_one_line_naming_every_form(k):
    message = user_error(tiny(perturb=False).groups, k, "reconstructions.k")
    assert message == (
        f"reconstructions.k={k!r}: use 'all', an integer 0..5 (stage one has 5 latent groups) "
        "or '<R>px' for the groups up to R pixels (resolutions [1, 4, 8])"
    )


def test_groups_refuses_fewer_than_the_callers_minimum():
    model = tiny(perturb=False)
    assert model.groups("1px", minimum=1) == 1
    assert "k='0px': use 'all', an integer 1..5" in user_error(model.groups, "0px", minimum=1)
    assert "k=0: use 'all', an integer 1..5" in user_error(model.groups, 0, minimum=1)


def test_reconstruct_takes_k_in_every_form():
    model, x = tiny(), images(2)
    a = model.reconstruct(x, k="4px", generator=gen(5), output="mean")
    assert torch.equal(a, model.reconstruct(x, k=3, generator=gen(5), output="mean"))
    assert torch.equal(model.reconstruct(x, k="all", generator=gen(5)), model.reconstruct(x, generator=gen(5)))


# ---- reconstruction --------------------------------------------------------------------------------------------------
def test_reconstruct_with_no_posterior_groups_ignores_the_images():
    model = tiny()
    a = model.reconstruct(images(2, seed=1), k=0, generator=gen(5))
    b = model.reconstruct(images(2, seed=2), k=0, generator=gen(5))
    assert torch.equal(a, b)
    # and it is a prior sample: the same as sample() with the same generator
    assert torch.equal(a, model.sample(2, generator=gen(5)))


def test_reconstruct_with_all_groups_depends_on_the_images():
    model = tiny()
    g = model.num_groups
    a = model.reconstruct(images(2, seed=1), k=g, generator=gen(5), output="mean")
    b = model.reconstruct(images(2, seed=2), k=g, generator=gen(5), output="mean")
    assert not torch.allclose(a, b)
    assert torch.equal(a, model.reconstruct(images(2, seed=1), generator=gen(5), output="mean"))  # k defaults to all


@pytest.mark.parametrize("temperature", [0.0, 0.1, 2.0, [0.5, 0.0, 3.0, 0.1, 0.2]])
def test_reconstruct_temperature_leaves_posterior_draws_alone(temperature):
    """Temperature is the prior's (as in VDVAE): with every group from the posterior it changes nothing, and the
    draws are the posterior's own (temperature 1), not its mean."""
    model, x = tiny(), images(3)
    true_draws = model.reconstruct(x, generator=gen(3), output="mean")
    assert torch.equal(model.reconstruct(x, temperature=temperature, generator=gen(3), output="mean"), true_draws)
    assert not torch.allclose(true_draws, posterior_means_decoded(model, x))


@pytest.mark.parametrize("temperature", [0.0, [9.0, 9.0, 9.0, 0.0, 0.0]])
def test_reconstruct_temperature_scales_the_prior_groups_after_k(temperature):
    """k = 3 of 5 at temperature 0: the first 3 groups are posterior draws, the last 2 their prior means (a list's
    first k values are unused)."""
    model, x = tiny(), images(2)
    drawn = model.encode_latents(x, temperature=1.0, generator=gen(1))[:3]
    expected = model.sample(2, temperature=0.0, latents=[*drawn, None, None], output="mean")
    torch.testing.assert_close(model.reconstruct(x, k=3, temperature=temperature, generator=gen(1), output="mean"), expected)
    assert not torch.allclose(model.reconstruct(x, k=3, temperature=1.0, generator=gen(1), output="mean"), expected)
    prior_means = model.reconstruct(x, k=0, temperature=0.0, generator=gen(1), output="mean")
    assert torch.equal(prior_means, model.reconstruct(x, k=0, temperature=0.0, generator=gen(2), output="mean"))


@pytest.mark.parametrize("k", [-1, 6, 100])
def test_reconstruct_k_out_of_range_is_a_user_error(k):
    model = tiny(perturb=False)
    assert f"k={k}: use 'all', an integer 0..5" in user_error(model.reconstruct, images(2), k=k)


# ---- latent space: float latents in, normalised and clipped ------------------------------------------------------------
def latent_vae(seed=0, **overrides) -> HierarchicalVAE:
    return tiny(seed=seed, channels=4, likelihood="gaussian", pixel_mean=0.5, pixel_std=2.0, **overrides)


def latents(n=3, seed=0) -> torch.Tensor:
    return 0.5 + 2.0 * torch.randn(n, 4, 8, 8, generator=gen(seed))


def test_latent_model_scores_normalised_clipped_latents():
    model = latent_vae()
    x = latents()
    x[0, 0, 0, 0] = 100.0  # far outside: clipped to +4 after normalising
    target = model.targets(x)
    assert target.max().item() == 4.0
    torch.testing.assert_close(target[1], ((x[1] - 0.5) / 2.0).clamp(-4, 4))
    elbo = model(x)
    assert elbo.loss.shape == (3,) and torch.isfinite(elbo.loss).all()
    elbo.loss.mean().backward()
    assert model.likelihood.out_conv.weight.grad.abs().sum() > 0


def test_latent_model_samples_latents_not_images():
    model = latent_vae()
    z = model.sample(2, generator=gen(0))
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    torch.testing.assert_close(model.denormalise(torch.zeros(1)), torch.tensor([0.5]))
    assert "decode them" in user_error(model.to_uint8, z)


def test_unknown_likelihood_is_a_user_error():
    assert "unknown likelihood" in user_error(HierarchicalVAE, **TINY, channels=4, likelihood="laplace")


# ---- configuration errors ----------------------------------------------------------------------------------------------
def test_other_channel_counts_are_a_user_error():
    assert "only 1 (grayscale) or 3 (RGB)" in user_error(HierarchicalVAE, **{**TINY, "channels": 2})


def test_bad_block_strings_reach_the_user_as_user_errors():
    assert "enc_blocks must start at the image size" in user_error(HierarchicalVAE, **{**TINY, "channels": 1, "image_size": 16})
    message = user_error(HierarchicalVAE, **{**TINY, "channels": 1, "dec_blocks": "1x1,4m1,4x1"})
    assert "dec_blocks end at resolution 4" in message


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize(
    "overrides",
    [dict(width=2), dict(custom_widths="4:0"), dict(zdim=0), dict(num_mixtures=0)],
    ids=["bottleneck-width-0", "custom-width-0", "zdim-0", "num-mixtures-0"],
)
def test_non_positive_sizes_are_a_user_error(overrides):
    with pytest.raises(UserError):
        HierarchicalVAE(**{**TINY, "channels": 1, **overrides})(images(1, 1))
