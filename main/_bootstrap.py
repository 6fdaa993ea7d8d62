"""Lets `python main/<entry>.py` import the `main` package (the repository root is not on sys.path then), and so can
the processes it starts: submitit's job processes, local or on SLURM nodes, unpickle the job with `main` imports."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
