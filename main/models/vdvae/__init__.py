"""VDVAE-style hierarchical VAE (arXiv 2011.10650)."""

from main.models.vdvae.vae import ELBO, HierarchicalVAE

__all__ = ["ELBO", "HierarchicalVAE"]
