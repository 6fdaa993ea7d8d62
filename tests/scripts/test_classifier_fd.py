"""scripts/classifier_fd.py: the Fréchet value, its behaviour on shifted images, the file round trip and the one-line errors.

Everything uses a tiny untrained classifier of the script's own architecture and small synthetic
images, so the tests take seconds and need no data set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from scripts import classifier_fd as cfd

TINY = {"channels": 3, "image_size": 8, "num_classes": 10, "width": 4}  # 32-dim features


def synthetic_images(n: int = 200, seed: int = 0) -> torch.Tensor:
    """Smooth random colour blobs: uint8 [n, 3, 8, 8], with some spread so the covariance is well conditioned."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 2, 2, generator=generator) * 160 + 40
    fine = torch.randn(n, 3, 8, 8, generator=generator) * 20
    return (torch.nn.functional.interpolate(coarse, size=8, mode="bilinear") + fine).clamp(0, 255).to(torch.uint8)


@pytest.fixture
def classifier(tmp_path):
    """A saved tiny classifier whose cached 'test' statistics are those of `synthetic_images()`."""
    torch.manual_seed(0)
    model = cfd.build_classifier(**TINY).eval()
    features, _ = cfd.extract(model, [synthetic_images()])
    path = tmp_path / "tiny.pt"
    cfd.save_classifier(path, model, TINY, test_accuracy=0.1, test_stats=cfd.statistics(features))
    return path


def fd_of(images: torch.Tensor, path) -> float:
    model, payload = cfd.load_classifier(path)
    return cfd.score(images, model, payload)["classifier_fd"]


def test_a_set_against_its_own_statistics_is_zero(classifier):
    model, payload = cfd.load_classifier(classifier)
    assert payload["test_stats"]["sigma"].dtype == torch.float64
    trace = float(payload["test_stats"]["sigma"].trace())
    assert abs(fd_of(synthetic_images(), classifier)) < 1e-6 * trace


def test_fd_grows_as_images_are_brightened(classifier):
    images = synthetic_images()
    fds = [fd_of((images.int() + shift).clamp(0, 255).to(torch.uint8), classifier) for shift in (0, 20, 60)]
    # An untrained net has small features, so compare with the spread of the features, not with 1.
    scale = float(cfd.load_classifier(classifier)[1]["test_stats"]["sigma"].trace())
    assert fds[0] < 1e-6 * scale and 0.05 * scale < fds[1] < fds[2]
    other_draw = fd_of(synthetic_images(seed=1), classifier)  # same distribution, other images: small, not zero
    assert 1e-3 * scale < other_draw < fds[1]


# Dead ReLU units (constant 0) make sigma singular, as in real feature sets; scipy warns but is accurate here.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_frechet_value_matches_scipy_sqrtm():
    torch.manual_seed(0)
    model = cfd.build_classifier(**TINY)
    a = cfd.statistics(cfd.extract(model, [synthetic_images(seed=0)])[0])
    b = cfd.statistics(cfd.extract(model, [(synthetic_images(seed=1).int() + 30).clamp(0, 255).to(torch.uint8)])[0])
    mu1, s1, mu2, s2 = (x.numpy() for x in (a["mu"], a["sigma"], b["mu"], b["sigma"]))
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))
    assert cfd.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_score_cli_reads_pngs_and_npz_alike(classifier, tmp_path, capsys):
    images = synthetic_images(n=40)
    hwc = images.permute(0, 2, 3, 1).numpy()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(hwc):
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    np.savez(tmp_path / "images.npz", images=hwc)

    from_pngs = cfd.main(["score", str(folder), "--classifier", str(classifier), "--json", str(tmp_path / "out.json")])
    from_npz = cfd.main(["score", str(tmp_path / "images.npz"), "--classifier", str(classifier)])
    assert from_pngs["classifier_fd"] == from_npz["classifier_fd"] > 0  # 40 other images than the cached statistics
    assert from_pngs["n_images"] == 40 and from_pngs["classifier_test_accuracy"] == 0.1
    assert 0 < from_pngs["mean_max_softmax"] <= 1 and 0 <= from_pngs["class_entropy_bits"] <= np.log2(10)
    assert "NOT comparable" in from_pngs["note"] and "warning" not in from_pngs  # 40 images > 32 feature dims
    assert json.loads((tmp_path / "out.json").read_text())["classifier_fd"] == from_pngs["classifier_fd"]


def test_train_writes_a_loadable_file(tmp_path):
    """A tiny wall-clock run on a fake CIFAR-10 folder: the file holds what `score` needs, written atomically."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("test", 20)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        np.savez(tmp_path / f"cifar10_{split}.npz", images=images, labels=np.arange(n) % 10)
    out = tmp_path / "clf" / "c.pt"
    summary = cfd.train(tmp_path, minutes=0.01, out=out, width=4, batch_size=16, dataset_overrides={"val_size": 8})
    assert [p.name for p in out.parent.iterdir()] == ["c.pt"]
    model, payload = cfd.load_classifier(out)
    assert payload["arch"] == {"channels": 3, "image_size": 32, "num_classes": 10, "width": 4}
    assert payload["test_stats"]["sigma"].shape == (32, 32) and payload["test_stats"]["mu"].dtype == torch.float64
    assert 0 <= payload["test_accuracy"] <= 1 and summary["test_images"] == 20 and summary["train_steps"] >= 1


def run_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cfd.main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_missing_classifier_says_how_to_train(tmp_path, capsys):
    message = run_error(["score", str(tmp_path), "--classifier", str(tmp_path / "none.pt")], capsys)
    assert "no classifier at" in message and "classifier_fd.sh train --data-root" in message


def test_wrong_image_size_or_channels(classifier, tmp_path, capsys):
    wrong_size = tmp_path / "big"
    wrong_size.mkdir()
    Image.new("RGB", (12, 12)).save(wrong_size / "0.png")
    message = run_error(["score", str(wrong_size), "--classifier", str(classifier)], capsys)
    assert "12x12 with 3 channel(s)" in message and "takes 8x8 with 3" in message

    np.savez(tmp_path / "gray.npz", images=np.zeros((5, 8, 8, 1), np.uint8))
    assert "with 1 channel(s)" in run_error(["score", str(tmp_path / "gray.npz"), "--classifier", str(classifier)], capsys)


def test_missing_or_empty_inputs(classifier, tmp_path, capsys):
    assert "does not exist" in run_error(["score", str(tmp_path / "nowhere"), "--classifier", str(classifier)], capsys)
    (tmp_path / "empty").mkdir()
    assert "no .png files in" in run_error(["score", str(tmp_path / "empty"), "--classifier", str(classifier)], capsys)
    assert "data root" in run_error(["train", "--data-root", str(tmp_path / "no-data"), "--out", str(tmp_path / "c.pt")], capsys)
