"""Two-stage sampling and evaluation from a refiner checkpoint alone (it holds the frozen stage one too).

    python main/test_ddpm.py checkpoint=outputs/run/checkpoints/last.ckpt samples.n=10000 sampler=dpm_solver
    python main/test_ddpm.py checkpoint=... devices=4                    # samples split across 4 GPUs
    python main/test_ddpm.py checkpoint=... tasks=[reconstructions]      # x -> stage one -> refined, with MSE/PSNR
    python main/test_ddpm.py checkpoint=... tasks=[interpolation]
    python main/test_ddpm.py checkpoint=... tasks=[speed_quality] speed_quality.n=1000 speed_quality.weights=<inception .pth>

Tasks write to out_dir: samples/ (refined, one PNG per image: what FID tools read), samples_stage_one/,
a grid of stage-one images above their refinements, .npz files, and results.json; speed_quality also
speed_quality/<sampler>_<steps>/ and plots/speed_quality.png.
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
from pathlib import Path

import hydra
import torch
from lightning.fabric import Fabric
from omegaconf import DictConfig

from main.evaluation.common import Shard
from main.evaluation.stage_two import evaluate
from main.utils.config import print_config_tree
from main.utils.errors import UserError, exit_on_user_error, run_entry_point


def launch(cfg: DictConfig) -> tuple[torch.device, Shard]:
    """Start one process per device (Lightning Fabric; also under SLURM or torchrun) and return this rank's device and shard."""
    strategy = "ddp" if cfg.devices != 1 or cfg.num_nodes != 1 else "auto"
    try:
        fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy)
    except (ValueError, ModuleNotFoundError) as err:  # devices this machine does not have, an accelerator it cannot run
        raise UserError(f"accelerator={cfg.accelerator} devices={cfg.devices}: {str(err).splitlines()[0]}") from None
    fabric.launch()
    return fabric.device, Shard(fabric.global_rank, fabric.world_size, fabric.barrier)


@hydra.main(config_path="configs", config_name="test_ddpm", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print_config_tree(cfg)
    device, shard = launch(cfg)
    results = evaluate(cfg, device, shard)
    if results is not None:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in results["metrics"].items() if not isinstance(v, list)}
        print(f"results: {shown}\nwritten to {Path(cfg.out_dir).resolve()}")


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
