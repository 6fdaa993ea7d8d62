"""One-line errors for mistakes a user can fix, and the entry-point wrappers that print them."""

from __future__ import annotations

import difflib
import functools
import inspect
import re
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


def check_command_line(config_dir: Path, overrides: Sequence[str], config_name: str | None = None) -> None:
    """Refuse in one line what Hydra would report in many, with status 1: an override it cannot parse, commas it would
    read as several runs, a config group choice with no config (unless the command adds config folders, which may
    hold it) and, given the config's name, a key the config does not have. Commands with Hydra flags (-m, --cfg, ...)
    are left to Hydra."""
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
        plugins = override.is_hydra_override()  # hydra/launcher=submitit_local: Hydra's groups also hold its plugins' configs
        if not adds_configs and not plugins and folder.is_dir() and isinstance(name, str) and not (folder / f"{name}.yaml").is_file():
            choices = sorted(path.stem for path in folder.glob("*.yaml") if not path.stem.startswith("_"))
            raise UserError(f"unknown {override.key_or_group} '{name}': use one of {', '.join(choices)}")
    if config_name is not None:
        check_composition(config_dir, config_name, overrides)


def check_composition(config_dir: Path, config_name: str, overrides: Sequence[str]) -> None:
    """Compose the config as Hydra will: a key it does not have is named with the closest keys it has, and any other
    override Hydra cannot apply is reported in one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            compose(config_name, overrides=list(overrides))
    except ConfigCompositionException as err:
        cause = err.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.parent_node is not None:
            missing = cause.full_key  # the first missing part: 'traner' of traner.max_steps=5, which the line names
            keys = [arg.partition("=")[0].lstrip("+~") for arg in overrides]
            key = next((k for k in keys if k == missing or k.startswith(missing + ".")), missing)
            raise UserError(unknown_key(key, cause.parent_node._get_root())) from None
        raise UserError(" ".join(str(err).split())) from None


def unknown_key(key: str, config) -> str:
    """The one line for a key `config` does not have: the closest dotted keys, else keys with a close last name."""
    from omegaconf import OmegaConf

    def dotted(node: dict, prefix: str = "") -> list[str]:
        keys = []
        for name, value in node.items():
            keys.append(prefix + str(name))
            if isinstance(value, dict):
                keys += dotted(value, f"{prefix}{name}.")
        return keys

    keys = [
        k
        for k in dotted(OmegaConf.to_container(config, resolve=False))
        if k.startswith("hydra.") == key.startswith("hydra.") and not key.startswith(k + ".")  # no group the key is in
    ]
    close = difflib.get_close_matches(key, keys, n=1)
    if not close:
        leaves = difflib.get_close_matches(key.rsplit(".", 1)[-1], {k.rsplit(".", 1)[-1] for k in keys}, n=1)
        close = [k for k in keys if k.rsplit(".", 1)[-1] in leaves][:3]
    hint = f"did you mean {' or '.join(close)}?" if close else "list the keys with --cfg job"
    return f"unknown key '{key}': {hint}"


def quote_paths(overrides: Sequence[str]) -> list[str]:
    """Overrides whose value is an existing path Hydra's grammar would misread ('=', quotes, non-ASCII letters, commas)
    put in quotes, so that `checkpoint=<any path>` works: backslashes before a quote or the end are doubled, quotes
    escaped (https://hydra.cc/docs/advanced/override_grammar/basic/#quoted-values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, quoted = OverridesParser.create(), []
    for arg in overrides:
        key, equals, value = arg.partition("=")
        if equals and not arg.startswith("-") and value and Path(value).expanduser().exists():
            try:
                override = parser.parse_overrides([arg])[0]
                misread = override.is_sweep_override() or (isinstance(override.value(), str) and override.value() != value)
            except OverrideParseException:
                misread = True
            if misread:
                escaped = re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value)
                arg = f"{key}='{escaped}'"
        quoted.append(arg)
    return quoted


def run_entry_point(main: Callable[[], None], config_dir: Path) -> None:
    """Run a Hydra entry point after quoting its paths (`quote_paths`) and checking its command line
    (`check_command_line`); every entry point's config is named like its file."""
    sys.argv[1:] = quote_paths(sys.argv[1:])
    config_name = Path(inspect.unwrap(main).__code__.co_filename).stem
    exit_on_user_error(check_command_line)(config_dir, sys.argv[1:], config_name)
    main()


def check_trainer_settings(trainer: dict) -> None:
    """Trainer arguments Lightning refuses with a traceback or takes but then mishandles: an accelerator it does not know
    or this machine cannot run, 16-mixed on the CPU (it would quietly train in bf16-mixed; fp16 with loss scaling is a
    GPU mode there) and a validation interval of 0 (a division by zero mid-run)."""
    import torch

    check_accelerator(trainer["accelerator"])
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


def check_accelerator(accelerator) -> None:
    """trainer.accelerator by name: one Lightning knows (it raises a ValueError otherwise) and this machine can run
    (tpu without torch_xla is a ModuleNotFoundError). Accelerator objects are left to Lightning."""
    if not isinstance(accelerator, str) or accelerator == "auto":
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = sorted(AcceleratorRegistry.available_accelerators())
    usable = ["auto", *(name for name in names if AcceleratorRegistry[name]["accelerator"].is_available())]
    if accelerator == "gpu":  # Lightning's alias of cuda or mps, whichever the machine has
        runs = "cuda" in usable or "mps" in usable
    elif accelerator in names:
        runs = accelerator in usable
    else:
        raise UserError(f"trainer.accelerator={accelerator} is not an accelerator: use one of {', '.join(['auto', 'gpu', *names])}")
    if not runs:
        raise UserError(f"trainer.accelerator={accelerator} cannot run on this machine: use trainer.accelerator={' or '.join(usable)}")


def check_seed(seed) -> None:
    """seed: a whole number numpy can take (Lightning's seed_everything raises a ValueError otherwise, and rounds 1.5)."""
    from lightning.fabric.utilities.seed import max_seed_value, min_seed_value

    if isinstance(seed, bool) or not isinstance(seed, int) or not min_seed_value <= seed <= max_seed_value:
        raise UserError(f"seed={seed} is not a seed: use a whole number from {min_seed_value} to {max_seed_value}")
