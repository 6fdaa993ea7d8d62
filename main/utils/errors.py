"""One-line errors for mistakes a user can fix, and the entry-point wrappers that print them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf.errors import MissingMandatoryValue

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint) that names the fix.

    Entry points print these as one line and exit with status 2 instead of a traceback.
    """


def exit_on_user_error(fn: F) -> F:
    """Decorate an entry point so that a `UserError` (also when raised inside Hydra), a required setting left unset,
    or a Trainer argument Lightning refuses prints one line and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            message = str(err)
        except MissingMandatoryValue as err:
            message = f"{err.full_key} is not set: pass {err.full_key}=<value>"
        except Exception as err:
            if not isinstance(err, lightning_misconfiguration()):
                raise
            message = f"invalid trainer setting: {' '.join(str(err).split())}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    return wrapper  # type: ignore[return-value]


def lightning_misconfiguration() -> tuple[type[Exception], ...]:
    """Lightning's exception for bad Trainer arguments, if Lightning is loaded (not every entry point uses it)."""
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (module.MisconfigurationException,) if module else ()


def check_command_line(config_dir: Path, overrides: Sequence[str]) -> None:
    """Refuse in one line what Hydra would report in many, with status 1: an override it cannot parse, commas it would
    read as several runs, and a config group choice with no config (unless the command adds config folders, which may
    hold it). Commands with Hydra flags (-m, --cfg, ...) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if any(arg.startswith("-") for arg in overrides):
        return
    parser, parsed = OverridesParser.create(), []
    for arg in overrides:
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as err:
            reason = next(line for line in str(err).splitlines() if not line.startswith("Error parsing"))
            raise UserError(f"cannot read {arg!r} ({reason}): see https://hydra.cc/docs/advanced/override_grammar/basic") from None
    adds_configs = any(arg.startswith("hydra.searchpath") for arg in overrides)
    for arg, override in zip(overrides, parsed):
        key, _, value = arg.partition("=")
        if override.is_sweep_override():
            raise UserError(f"{arg}: the commas would make several runs; quote the value as one string: {key}='{value}'")
        folder, name = config_dir / override.key_or_group, override.value()
        if not adds_configs and folder.is_dir() and isinstance(name, str) and not (folder / f"{name}.yaml").is_file():
            choices = sorted(path.stem for path in folder.glob("*.yaml") if not path.stem.startswith("_"))
            raise UserError(f"unknown {override.key_or_group} '{name}': use one of {', '.join(choices)}")


def run_entry_point(main: Callable[[], None], config_dir: Path) -> None:
    """Run a Hydra entry point after checking its command line (`check_command_line`)."""
    exit_on_user_error(check_command_line)(config_dir, sys.argv[1:])
    main()


def check_trainer_settings(trainer: dict) -> None:
    """Trainer arguments Lightning takes but then mishandles: 16-mixed on the CPU (it would quietly train in bf16-mixed;
    fp16 with loss scaling is a GPU mode there) and a validation interval of 0 (a division by zero mid-run)."""
    import torch

    on_cpu = trainer["accelerator"] == "cpu" or (
        trainer["accelerator"] == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )
    if str(trainer["precision"]) in ("16", "16-mixed") and on_cpu:
        raise UserError(
            f"trainer.precision={trainer['precision']} (fp16 with loss scaling) needs a GPU; on the CPU Lightning would "
            "quietly train in bf16-mixed: use trainer.precision=bf16-mixed or 32"
        )
    interval = trainer.get("val_check_interval")
    if interval is not None and not (interval >= 1 if isinstance(interval, int) else 0 < interval <= 1):
        raise UserError(
            f"trainer.val_check_interval={interval} is not valid: use a number of training batches (>= 1) "
            "or a fraction of an epoch in (0, 1]"
        )
