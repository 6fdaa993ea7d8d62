"""Evaluate and sample a trained stage one from its checkpoint alone.

    python main/test_ae.py checkpoint=outputs/run/checkpoints/last.ckpt
    python main/test_ae.py checkpoint=... tasks=[samples] samples.n=10000 samples.temperature=0.9

Writes to out_dir: results.json, and per task one PNG per image, a grid and an .npz.
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
from pathlib import Path

import hydra
from omegaconf import DictConfig

from main.evaluation.stage_one import evaluate
from main.utils.config import print_config_tree
from main.utils.errors import exit_on_user_error, run_entry_point


@hydra.main(config_path="configs", config_name="test_ae", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    print_config_tree(cfg)
    results = evaluate(cfg)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in results["metrics"].items()}
    print(f"results: {shown}\nwritten to {Path(cfg.out_dir).resolve()}")
    # What a sweeper minimises: the bpd task's bits/dim (per latent dimension in latent space), without labels if scored so.
    keys = [f"{cfg.bpd.split}_{space}bpd{given}" for given in ("", "_given_label") for space in ("", "latent_")]
    return next((results["metrics"][key] for key in keys if key in results["metrics"]), None)


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
