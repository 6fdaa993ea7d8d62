"""A diffusers AutoencoderKL from a local folder, rebuilding either autoencoder from its spec, and the one-line error
when a pretrained one cannot be loaded."""

from __future__ import annotations

import pytest
import torch
from test_kl_autoencoder import unit_images

from main.models.autoencoder import DiffusersAutoencoder, KLAutoencoder, autoencoder_spec, build_autoencoder
from main.utils.errors import UserError

TINY_DIFFUSERS = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=8,
)  # fmt: skip


def test_diffusers_autoencoder_loads_from_a_local_folder(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    original = AutoencoderKL(**TINY_DIFFUSERS).eval()
    original.save_pretrained(tmp_path / "vae")
    loaded = DiffusersAutoencoder.load(str(tmp_path / "vae")).eval()
    x = unit_images()
    mean, logvar = loaded.encode(x)
    with torch.no_grad():
        posterior = original.encode(x).latent_dist
        assert torch.equal(mean, posterior.mean) and torch.equal(logvar, posterior.logvar)
        assert torch.equal(loaded.decode(mean), original.decode(posterior.mean).sample)
    assert (loaded.latent_channels, loaded.downsample_factor, loaded.image_channels) == (4, 2, 3)


@pytest.mark.parametrize("kind", ["kl", "diffusers"])
def test_spec_rebuilds_the_architecture_the_weights_fit(kind):
    torch.manual_seed(0)
    ae = KLAutoencoder(image_channels=3, base_channels=8) if kind == "kl" else DiffusersAutoencoder(TINY_DIFFUSERS)
    rebuilt = build_autoencoder(autoencoder_spec(ae))
    rebuilt.load_state_dict(ae.state_dict())  # strict: same tensors, same shapes
    x = unit_images()
    with torch.no_grad():
        assert torch.equal(rebuilt.encode(x)[0], ae.encode(x)[0])


def test_unknown_spec_kind_is_a_user_error():
    with pytest.raises(UserError, match="unknown autoencoder kind"):
        build_autoencoder({"kind": "vq", "config": {}})


def test_unreachable_hub_name_is_one_line_naming_the_download(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        DiffusersAutoencoder.load("nobody/no-such-vae")
    message = str(info.value)
    assert "\n" not in message and "huggingface-cli download nobody/no-such-vae" in message


def test_a_folder_of_pickled_weights_is_refused_without_unpickling(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    AutoencoderKL(**TINY_DIFFUSERS).save_pretrained(tmp_path / "vae", safe_serialization=False)  # diffusion_pytorch_model.bin
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("the .bin was unpickled"))
    with pytest.raises(UserError) as info:
        DiffusersAutoencoder.load(str(tmp_path / "vae"))
    message = str(info.value)
    assert "\n" not in message and "has no safetensors weights" in message and "save_pretrained" in message
    assert "huggingface-cli" not in message
