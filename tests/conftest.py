"""Settings every test needs; set before torch is imported."""

import os

# Idle OpenMP threads sleep instead of spinning (spinning starves the working threads on busy machines).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
