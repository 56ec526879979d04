"""Autoregressive models over learned codes: the VQ-VAE (:mod:`chainrule.latent.vqvae`) and the
composed latent model p(z) p(x | z) with any registered chainrule model as the prior
(:mod:`chainrule.latent.model`). The run-level pieces (training a VQ-VAE run, caching its codes,
``compose``, the two-part code) are in :mod:`chainrule.apps.latent`."""

from chainrule.latent.model import LatentModel, build_vqvae, is_latent_checkpoint, load
from chainrule.latent.vqvae import VQVAE

__all__ = ["LatentModel", "VQVAE", "build_vqvae", "is_latent_checkpoint", "load"]
