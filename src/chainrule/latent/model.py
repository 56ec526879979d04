"""The latent model: p(x, z) = p(z) p(x | z), a VQ-VAE's decoder p(x | z) under a prior p(z) that is
any registered discrete chainrule model over the VQ-VAE's code grids ``(1, h, w)`` with
K = codebook_size values (van den Oord et al. 2017, sec. 3.2; Razavi et al. 2019).

The marginal p(x) = sum_z p(z) p(x | z) sums over K^(h*w) grids and is not computed. What is
reported instead is the upper bound given by the single grid z* the encoder picks,

    -log p(x) <= -log p(z*) - log p(x | z*)

(every term of the sum is >= 0, so the sum is >= the one term), in nats and bits/dim, always
labelled as a bound. It is also the length of the two-part code of
:mod:`chainrule.apps.latent` (the codes under the prior, then the pixels under the decoder).

Shapes: images ``(B, C, H, W)`` long; codes ``(B, h, w)`` long; the prior's events ``(B, 1, h, w)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from chainrule.errors import CheckpointError, InputError, UnknownNameError
from chainrule.io.checkpoint import CONFIG_FILE, load_matching_state, read_config, read_weights, save_model
from chainrule.latent.vqvae import VQVAE
from chainrule.models.registry import create_model, upgrade_hyperparameters


class LatentModel(nn.Module):
    """A VQ-VAE's decoder under a prior over its codes (see the module docstring).

    Args:
        vqvae: the trained :class:`~chainrule.latent.vqvae.VQVAE`.
        prior: a discrete chainrule model of shape ``(1, h, w)`` with ``num_values = codebook_size``
            (class-conditional or not), trained on the VQ-VAE's codes (``latents:RUN``).
    """

    name: ClassVar[str] = "latent"

    def __init__(self, vqvae: VQVAE, prior: Any) -> None:
        super().__init__()
        if tuple(prior.shape) != vqvae.code_shape or prior.num_values != vqvae.codebook_size:
            raise InputError(f"the prior models events of shape {tuple(prior.shape)} with K={prior.num_values}, but the "
                             f"VQ-VAE's codes are grids {vqvae.code_shape} of K={vqvae.codebook_size} codes: train the "
                             "prior on latents:RUN of this VQ-VAE run")
        self.vqvae, self.prior = vqvae, prior
        self.shape, self.num_values, self.dim = vqvae.shape, vqvae.num_values, vqvae.dim

    @property
    def num_classes(self) -> int | None:
        return getattr(self.prior, "num_classes", None)

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.prior, "conditional", False))

    @property
    def device(self) -> torch.device:
        return self.vqvae.device

    @property
    def config(self) -> dict[str, Any]:
        return {"model": self.name, "shape": list(self.shape), "num_values": self.num_values,
                "vqvae": self.vqvae.config, "prior": self.prior.config}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``model.safetensors`` (the VQ-VAE's tensors under ``vqvae.``, the prior's under ``prior.``)
        and ``config.json`` (both configs)."""
        return save_model(self, directory, extra=extra)

    def codes(self, x: Any) -> torch.Tensor:
        """z*, the encoder's codes of images ``(B, C, H, W)``: ``(B, h, w)`` long."""
        return self.vqvae.encode(x)

    @torch.no_grad()
    def bound_terms(self, x: Any, context: Any = None, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-log p(z*), -log p(x | z*))``, each ``(N,)`` float64 nats on the CPU, for images
        ``(N, C, H, W)``; their sum is the upper bound on -log p(x)."""
        was = self.training
        self.eval()
        try:
            x, _ = self.vqvae.validate(x)
            prior_nll, recon_nll = [], []
            n = len(x)
            for a in range(0, n, batch_size):
                xb = x[a:a + batch_size]
                z = self.vqvae.encode(xb)
                ctx = context
                if context is not None and torch.as_tensor(context).dim() >= 1 and len(torch.as_tensor(context)) == n:
                    ctx = torch.as_tensor(context)[a:a + batch_size]
                prior_nll.append(-self.prior.log_prob(z[:, None], ctx).double().cpu())
                recon_nll.append(-self.vqvae.reconstruction_log_prob(xb, z).double().cpu())
        finally:
            self.train(was)
        return torch.cat(prior_nll), torch.cat(recon_nll)

    def nll_upper_bound(self, x: Any, context: Any = None) -> torch.Tensor:
        """-log p(z*) - log p(x | z*) ``(N,)`` nats: an upper bound on -log p(x), never the exact NLL."""
        a, b = self.bound_terms(x, context)
        return a + b

    @torch.no_grad()
    def sample(self, n: int, context: Any = None, generator: torch.Generator | None = None, *,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               decode: str = "sample", return_codes: bool = False) -> Any:
        """``n`` images ``(n, C, H, W)``: codes z ~ p(z) (the prior's own sampler, with its cache and
        decoding options), then x ~ p(x | z) (``decode="sample"``, ancestral: a sample of the model),
        or the decoder's most probable (``"mode"``) or mean (``"mean"``) image."""
        if decode not in ("sample", "mode", "mean"):
            raise InputError(f"decode must be 'sample', 'mode' or 'mean', got {decode!r}")
        self.eval()
        z = self.prior.sample(n, context, generator=generator, temperature=temperature, top_k=top_k, top_p=top_p)
        z = z[:, 0]
        x = self.vqvae.decode(z, decode, generator)
        return (x, z) if return_codes else x


def build_vqvae(config: dict[str, Any]) -> VQVAE:
    """A VQ-VAE from its config (``{"model": "vqvae", "shape", "num_values", "hyperparameters"}``)."""
    try:
        return VQVAE(tuple(config["shape"]), config["num_values"], **config.get("hyperparameters", {}))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot rebuild the VQ-VAE from its config ({exc})") from None


def is_latent_checkpoint(directory: str | Path) -> str | None:
    """``"vqvae"`` or ``"latent"`` when ``directory`` holds such a checkpoint, else None."""
    try:
        name = read_config(directory).get("model")
    except CheckpointError:
        return None
    return name if name in ("vqvae", "latent") else None


def load(directory: str | Path, map_location: str | torch.device = "cpu") -> VQVAE | LatentModel:
    """Load a VQ-VAE checkpoint or a composed latent model (``chainrule compose``) from ``directory``
    (a checkpoint directory; a run's is ``RUN/best``)."""
    directory = Path(directory)
    if (directory / "best" / CONFIG_FILE).is_file():
        directory = directory / "best"
    config = read_config(directory)
    kind = config.get("model")
    if kind == "vqvae":
        model: Any = build_vqvae(config)
    elif kind == "latent":
        try:
            p = config["prior"]
            prior = create_model(p["model"], tuple(p["shape"]), p.get("num_values"),
                                 **upgrade_hyperparameters(p["model"], p.get("hyperparameters", {})))
            model = LatentModel(build_vqvae(config["vqvae"]), prior)
        except (KeyError, TypeError, UnknownNameError, InputError) as exc:
            raise CheckpointError(f"{directory / CONFIG_FILE}: cannot rebuild the latent model ({exc})") from None
    else:
        raise CheckpointError(f"{directory} holds a {kind!r} model, not a VQ-VAE or a latent model")
    load_matching_state(model, read_weights(directory, map_location), directory)
    return model.to(map_location).eval()
