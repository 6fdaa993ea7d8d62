"""Cached arrays: verified against their key on every read, never unpickled, resumable in chunks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from main.utils import feature_cache
from main.utils.feature_cache import FeatureCache, write_npz

KEY = {"images": "set-a", "network": "n1"}


def counting(rows: int = 12, dim: int = 3):
    """compute(indices) -> features whose rows are their indices; records every call."""
    calls = []

    def compute(indices):
        calls.append(list(indices))
        return {"f": np.repeat(np.asarray(indices, np.float32)[:, None], dim, 1)}

    return compute, calls


def test_second_read_comes_from_the_cache_and_other_keys_are_separate(tmp_path):
    cache, (compute, calls) = FeatureCache(tmp_path), counting()
    first = cache.get_or_build("a", KEY, ["f"], 12, compute)
    again = cache.get_or_build("a", KEY, ["f"], 12, compute)
    assert len(calls) == 1 and np.array_equal(first["f"], again["f"]) and first["f"][5, 0] == 5
    cache.get_or_build("a", KEY | {"network": "n2"}, ["f"], 12, compute)  # same file name, other key: recomputed
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_rows", "nan", "missing_array"])
def test_a_damaged_or_mismatched_file_is_recomputed_not_trusted(tmp_path, damage, capsys):
    cache, (compute, calls) = FeatureCache(tmp_path), counting()
    cache.get_or_build("a", KEY, ["f"], 12, compute)
    path = tmp_path / "a.npz"
    if damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "wrong_rows":
        write_npz(path, KEY, {"f": np.zeros((11, 3), np.float32)})
    elif damage == "nan":
        write_npz(path, KEY, {"f": np.full((12, 3), np.nan, np.float32)})
    else:
        write_npz(path, KEY, {"g": np.zeros((12, 3), np.float32)})
    again = cache.get_or_build("a", KEY, ["f"], 12, compute)
    assert len(calls) == 2 and again["f"][7, 0] == 7
    assert "ignoring cache file" in capsys.readouterr().err


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_planted_pickle_never_runs(tmp_path):
    marker = tmp_path / "marker"
    planted = np.empty(1, dtype=object)
    planted[0] = Payload(marker)
    np.savez(tmp_path / "a.npz", __key__=np.array('{"images": "set-a", "network": "n1"}'), f=planted)
    compute, calls = counting()
    FeatureCache(tmp_path).get_or_build("a", KEY, ["f"], 12, compute)
    assert not marker.exists() and len(calls) == 1
    with open(tmp_path / "bait.npz", "wb") as f:
        np.savez(f, f=planted)
    np.load(tmp_path / "bait.npz", allow_pickle=True)["f"]  # the bait is live: unpickled freely it creates the marker
    assert marker.exists()


def test_an_interrupted_extraction_resumes_from_its_last_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "CHUNK", 4)
    cache, (compute, calls) = FeatureCache(tmp_path), counting()

    def dies_on_third_chunk(indices):
        if indices[0] == 8:
            raise KeyboardInterrupt
        return compute(indices)

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build("a", KEY, ["f"], 12, dies_on_third_chunk)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7]] and not (tmp_path / "a.npz").exists()
    features = cache.get_or_build("a", KEY, ["f"], 12, compute)
    assert calls[2:] == [[8, 9, 10, 11]]  # only the missing chunk
    assert np.array_equal(features["f"][:, 0], np.arange(12)) and not (tmp_path / ".a.parts").exists()
