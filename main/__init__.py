"""Two-stage image generation: a hierarchical VAE (stage one) refined by a conditional DDPM (stage two)."""
