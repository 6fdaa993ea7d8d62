"""The resolved config, printed as a tree at the start of a run by its first process only."""

from __future__ import annotations

from helpers import tiny_train_config
from lightning.fabric.utilities.rank_zero import rank_zero_only

from main.utils.config import print_config_tree


def test_the_tree_shows_resolved_values_by_group(tmp_path, capsys):
    print_config_tree(tiny_train_config(tmp_path / ("long_folder_name_" * 8)))
    out = capsys.readouterr().out
    assert "├── vae" in out and "├── trainer" in out and "max_steps: 100000" in out
    assert "image_size: 8" in out and "${dataset" not in out  # interpolations resolved
    unwrapped = out.replace("\n", "").replace(" ", "").replace("│", "")
    assert unwrapped.count("long_folder_name_" * 8) == 2  # run_dir and logger.save_dir: long values wrapped, not cut


def test_other_ranks_print_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    print_config_tree(tiny_train_config(tmp_path))
    assert capsys.readouterr().out == ""
