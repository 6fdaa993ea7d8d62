"""Two-stage image generation: a hierarchical VAE (stage one) refined by a conditional DDPM (stage two).

In Python: ``from main import load`` (docs/python_api.md).
"""


def load(path, device: str = "auto"):
    """A trained stage one or refiner from its checkpoint alone, ready to `sample` (and, stage one, score: `bpd`)."""
    from main.api import load as load_trained  # imported here so that `import main` stays cheap

    return load_trained(path, device)
