"""Import OpenAI's published VDVAE weights (github.com/openai/vdvae) as a stage-one checkpoint, or export one back.

    python main/import_vdvae.py preset=imagenet64 weights=imagenet64-iter-1600000-model-ema.th out=outputs/vdvae-i64/checkpoints/last.ckpt
    python main/import_vdvae.py preset=ffhq1024 weights=<...-model.th> ema_weights=<...-model-ema.th> out=...
    python main/import_vdvae.py export=outputs/run/checkpoints/last.ckpt out=exported/run    # run-model.th, run-model-ema.th

The imported checkpoint carries its config like a trained one, so test_ae.py, train_ddpm.py (stage_one=)
and load_stage_one take it as it is. Name mapping and checks: main/models/vdvae/original_format.py.
"""

from __future__ import annotations

try:  # first: puts the repository on sys.path
    from main import _bootstrap  # noqa: F401  (run as a package)
except ModuleNotFoundError:
    import _bootstrap  # noqa: F401  (run as `python main/<entry>.py`)
from pathlib import Path
from typing import Any

import hydra
import lightning
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from main.models.vdvae.original_format import (
    VDVAE_PIXEL_STATS,
    check_convertible,
    check_fits,
    closest_preset,
    fit_encoder_blocks,
    from_original,
    read_original,
    to_original,
)
from main.systems.stage_one import StageOneSystem, load_stage_one
from main.utils.checkpoint import AtomicCheckpointIO
from main.utils.config import plain
from main.utils.errors import UserError, exit_on_user_error, run_entry_point

# The imported EMA is a long-run average (VDVAE trained 0.65M to 1.7M updates): a count past the EMA warm-up
# makes fine-tuning continue it at ema_rate; with 0, AveragedModel would overwrite it at the first update.
IMPORTED_EMA_UPDATES = 1_000_000


def stage_one_config(preset: str, overrides: list[str]) -> DictConfig:
    """The train_ae config of a VDVAE preset (vae/<preset>.yaml, dataset/<preset>.yaml) with the user's overrides."""
    try:
        return hydra.compose("train_ae", [f"dataset={preset}", f"vae={preset}", *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"overrides {list(overrides)} do not fit the stage-one config: {str(err).splitlines()[0]}") from None


def vdvae_model(stage: DictConfig, preset: str) -> tuple[dict, dict]:
    """(model kwargs, data set config) with VDVAE's input normalisation and level grid for the preset's data set."""
    model, data = plain(stage.vae.model), plain(stage.dataset)
    model["pixel_mean"], model["pixel_std"] = data["pixel_mean"], data["pixel_std"] = VDVAE_PIXEL_STATS[preset]
    model["level_grid"] = "floor"  # VDVAE's low-bit levels (the same as ours at 8 bits)
    return model, data


def import_weights(cfg: DictConfig) -> dict[str, Any]:
    """Build the stage-one checkpoint of VDVAE's weights; returns it (also written to cfg.out)."""
    if cfg.preset not in VDVAE_PIXEL_STATS:
        raise UserError(f"preset={cfg.preset} is not a VDVAE preset: choose from {', '.join(VDVAE_PIXEL_STATS)}")
    if cfg.weights is None:
        raise UserError("pass weights=<VDVAE *-model-ema.th file>")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"'{out}' already exists: pass overwrite=true to replace it")
    stage = stage_one_config(cfg.preset, list(cfg.overrides))
    model, data = vdvae_model(stage, cfg.preset)
    check_convertible(model)
    weights = read_original(cfg.weights)
    ema = read_original(cfg.ema_weights) if cfg.ema_weights is not None else weights
    preset_enc_blocks = model["enc_blocks"]
    model["enc_blocks"] = fit_encoder_blocks(weights, model)
    files = [(weights, cfg.weights)] + ([(ema, cfg.ema_weights)] if cfg.ema_weights is not None else [])
    for state, source in files:
        try:
            check_fits(state, model, source, cfg.preset)
        except UserError as err:
            candidates = {p: vdvae_model(stage_one_config(p, []), p)[0] for p in VDVAE_PIXEL_STATS}
            raise UserError(f"{err}; {closest_preset(state, candidates)}") from None

    system = StageOneSystem(model=model, optim=plain(stage.vae.optim), data=data, label_dropout=stage.vae.label_dropout)
    system.vae.load_state_dict(from_original(weights, model))
    system.ema.module.load_state_dict(from_original(ema, model))
    system.ema.n_averaged.fill_(IMPORTED_EMA_UPDATES)
    checkpoint = {
        "stage": StageOneSystem.STAGE,
        "hyper_parameters": dict(system.hparams),
        "state_dict": system.state_dict(),
        "global_step": 0,
        "epoch": 0,
        "pytorch-lightning_version": lightning.__version__,
        "imported_from": {
            "preset": cfg.preset,
            "weights": str(Path(cfg.weights).resolve()),
            "ema_weights": str(Path(cfg.ema_weights).resolve()) if cfg.ema_weights is not None else None,
            "preset_enc_blocks": preset_enc_blocks,
        },
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    changed = f"; enc_blocks fitted to the file: {model['enc_blocks']}" if model["enc_blocks"] != preset_enc_blocks else ""
    n_params = sum(p.numel() for p in system.vae.parameters())
    print(f"imported VDVAE {cfg.preset} ({n_params:,} parameters) into '{out}'{changed}")
    return checkpoint


def export_weights(cfg: DictConfig) -> tuple[Path, Path]:
    """Write a stage-one checkpoint's weights and EMA weights as VDVAE's <out>-model.th and <out>-model-ema.th."""
    targets = Path(f"{cfg.out}-model.th"), Path(f"{cfg.out}-model-ema.th")
    for target in targets:
        if target.exists() and not cfg.overwrite:
            raise UserError(f"'{target}' already exists: pass overwrite=true to replace it")
    system, checkpoint = load_stage_one(cfg.export)
    check_convertible(checkpoint["hyper_parameters"]["model"])
    for target, vae in zip(targets, (system.vae, system.ema_vae)):
        AtomicCheckpointIO().save_checkpoint(to_original(vae), target)
    print(f"exported '{cfg.export}' to '{targets[0]}' and '{targets[1]}'")
    return targets


@hydra.main(config_path="configs", config_name="import_vdvae", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "out"):
        raise UserError("pass out=<the .ckpt to write> (export: out=<prefix of the two .th files>)")
    if cfg.export is not None:
        export_weights(cfg)
    else:
        import_weights(cfg)


if __name__ == "__main__":
    run_entry_point(main, Path(__file__).parent / "configs")
