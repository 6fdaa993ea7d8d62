"""Imported first by every entry point, before torch.

- Lets `python main/<entry>.py` import the `main` package (the repository root is not on sys.path then).
- Makes idle OpenMP threads sleep instead of spin: on a busy machine spinning threads starve the
  ones doing the work (measured 50x slower on 2 shared cores; README, Performance).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
