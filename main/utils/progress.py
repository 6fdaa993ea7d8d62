"""One progress bar for every long job: items/s and time left on a terminal, a line now and then in logs."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int, description: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr; off with ``enabled=False``. Not a terminal (CI, SLURM logs): one line per 30 s at most."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=description,
        unit="img",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=interactive,
        mininterval=0.5 if interactive else 30.0,
        ascii=not interactive,
    )
