"""The VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning"): a convolutional
encoder maps an image ``(C, H, W)`` to a grid of vectors ``(d, h, w)`` (h = H / 2**downsample), each
replaced by its nearest of K codebook vectors; a decoder maps the codes back to a *normalized
discrete distribution* over the pixel values, p(x | z), so that -log p(x | z) is a real code length.

It is not an autoregressive model (it has no p(z) of its own): the prior over its code grids is any
registered chainrule model trained on them (:mod:`chainrule.latent.model` composes the two). It is
trained by its own objective (:meth:`VQVAE.training_loss`, through the ordinary
:class:`~chainrule.training.Trainer`, which takes models with ``own_objective = True``)::

    loss = -log p(x | z_q) / D  +  beta * ||z_e - sg(e)||^2  [+ ||sg(z_e) - e||^2 without EMA]

- codebook updates (``codebook=``): ``"ema"`` — exponential moving averages of the assigned
  vectors' sums and counts (Razavi et al. 2019, VQ-VAE-2, appendix; decay ``ema_decay``, Laplace
  smoothing of the counts), or ``"loss"`` — the codebook is a parameter learned by the codebook
  loss term; either way the encoder gets the commitment term (weight ``beta``) and the decoder's
  gradient reaches the encoder by the straight-through estimator;
- k-means initialisation: the first training batch's encoder outputs are clustered (k-means++
  seeds, ``kmeans_iterations`` Lloyd steps) into the initial codebook;
- dead-code restart: every ``restart_every`` training steps, codes assigned fewer than
  ``restart_threshold`` times per step on average over those steps (a code never chosen: 0) are
  moved onto random encoder outputs of the current batch (their EMA statistics reset with them);
- usage: the assignments of every training batch are counted; :meth:`epoch_metrics` reports the
  perplexity of the code frequencies exp(H) (K when all codes are used equally) and the share of
  codes used, and resets the counts (the trainer logs them every epoch).

Shapes: images ``(B, C, H, W)`` long in 0..K-1; codes ``(B, h, w)`` long in 0..codebook_size-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from chainrule.distributions import GroupDistribution, output_head
from chainrule.errors import InputError
from chainrule.models.config import ModelConfig, integer, non_negative, non_negative_number, number, one_of, positive, seed

CODEBOOK_MODES = ("ema", "loss")


class _ResBlock(nn.Module):
    """ReLU -> 3x3 conv -> ReLU -> 1x1 conv, added to the input (van den Oord et al. 2017, sec. 4.1)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


@dataclass(frozen=True)
class VQVAEConfig(ModelConfig):
    """The VQ-VAE's own hyperparameters (the output head's are checked by the head)."""

    codebook_size: int = integer(2)
    code_dim: int = positive()
    channels: int = positive()
    downsample: int = non_negative()
    num_res_blocks: int = non_negative()
    codebook: str = one_of(*CODEBOOK_MODES)
    beta: float = non_negative_number()
    ema_decay: float = number(0, 1)
    kmeans_iterations: int = non_negative()
    restart_every: int = non_negative()
    restart_threshold: float = non_negative_number()
    seed: int = seed()


class VQVAE(nn.Module):
    """A VQ-VAE over images ``shape = (C, H, W)`` of ``num_values`` levels.

    Args:
        codebook_size: K, the number of code vectors (the prior's num_values).
        code_dim: d, the size of each code vector.
        channels: channels of the encoder's and decoder's convolutions.
        downsample: halvings of the image size by stride-2 convolutions (28x28: 2 gives a 7x7 code
            grid, 1 gives 14x14); H and W must be divisible by 2**downsample.
        num_res_blocks: residual blocks after the encoder's and before the decoder's resampling.
        codebook: "ema" (moving-average updates, Razavi et al. 2019) or "loss" (the codebook loss).
        beta: weight of the commitment term ||z_e - sg(e)||^2.
        ema_decay: decay of the moving averages (codebook="ema") and of the usage counts.
        kmeans_iterations: Lloyd steps of the k-means initialisation on the first batch (0: random
            encoder outputs of the first batch).
        restart_every: training steps between dead-code restarts (0: never).
        restart_threshold: a code assigned fewer than this many times per step, on average over the
            last ``restart_every`` steps, is dead.
        head: the decoder's output distribution: None = Bernoulli for K=2, the discretized logistic
            mixture ("logistic_mixture") for K>2; or "categorical" (K logits per pixel).
        num_mixture_components: logistics per pixel of the logistic mixture (None: the head's default).
        seed: seed of the initialisation's and the restarts' random choices.
    """

    name: ClassVar[str] = "vqvae"
    own_objective: ClassVar[bool] = True  # trained by training_loss, not by -log p(x) (see the Trainer)
    closed_form: ClassVar[bool] = False
    num_members: ClassVar[int] = 1
    log_fields: ClassVar[tuple[str, ...]] = ("codebook_perplexity", "codebook_used", "codes_restarted")

    def __init__(self, shape: tuple[int, ...] | list[int], num_values: int, *, codebook_size: int = 512,
                 code_dim: int = 64, channels: int = 64, downsample: int = 2, num_res_blocks: int = 2,
                 codebook: str = "ema", beta: float = 0.25, ema_decay: float = 0.99, kmeans_iterations: int = 10,
                 restart_every: int = 100, restart_threshold: float = 0.03, head: str | None = None,
                 num_mixture_components: int | None = None, seed: int = 0) -> None:
        super().__init__()
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise InputError(f"vqvae: shape must be (C, H, W), got {shape!r}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"vqvae models images: shape must be (C, H, W) (a grey image is (1, H, W)), got {shape!r}")
        if not isinstance(num_values, int) or isinstance(num_values, bool) or num_values < 2:
            raise InputError(f"vqvae models discrete pixels: num_values must be an integer >= 2, got {num_values!r}")
        c, h, w = shape
        self.shape, self.num_values = shape, num_values
        self.hparams = hp = VQVAEConfig(  # validated
            codebook_size=codebook_size, code_dim=code_dim, channels=channels, downsample=downsample,
            num_res_blocks=num_res_blocks, codebook=codebook, beta=beta, ema_decay=ema_decay,
            kmeans_iterations=kmeans_iterations, restart_every=restart_every, restart_threshold=restart_threshold,
            seed=seed)
        self.codebook_size, self.code_dim, self.downsample = codebook_size, code_dim, downsample
        f = 2 ** downsample
        if h % f or w % f:
            raise InputError(f"vqvae: downsample={downsample} halves the image {downsample} times, so H and W must be "
                             f"divisible by {f}; the images are {h}x{w}")
        self.mode = codebook
        self.beta, self.ema_decay, self.restart_threshold = float(hp.beta), hp.ema_decay, float(hp.restart_threshold)
        self.kmeans_iterations, self.restart_every, self.seed = kmeans_iterations, restart_every, seed
        self.grid: tuple[int, int] = (h // f, w // f)
        self.dim = c * h * w
        if head is None:
            head = "bernoulli" if num_values == 2 else "logistic_mixture"
        # one group per pixel (its C channels): the logistic mixture couples the channels of a pixel
        self.head = output_head(num_values, num_mixture_components, c, head)
        self._init_args = {"shape": list(shape), "num_values": num_values, "codebook_size": codebook_size,
                           "code_dim": code_dim, "channels": channels, "downsample": downsample,
                           "num_res_blocks": num_res_blocks, "codebook": codebook, "beta": beta,
                           "ema_decay": ema_decay, "kmeans_iterations": kmeans_iterations,
                           "restart_every": restart_every, "restart_threshold": restart_threshold,
                           "head": head, "num_mixture_components": num_mixture_components, "seed": seed}

        enc: list[nn.Module] = []
        cin = c
        for _ in range(downsample):
            enc += [nn.Conv2d(cin, channels, 4, stride=2, padding=1), nn.ReLU()]
            cin = channels
        enc += [nn.Conv2d(cin, channels, 3, padding=1)]
        enc += [_ResBlock(channels, max(channels // 2, 1)) for _ in range(num_res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(channels, code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1)]
        dec += [_ResBlock(channels, max(channels // 2, 1)) for _ in range(num_res_blocks)]
        dec += [nn.ReLU()]
        for _ in range(downsample):
            dec += [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.ReLU()]
        dec += [nn.Conv2d(channels, self.head.num_params, 1)]
        self.decoder = nn.Sequential(*dec)

        k, d = self.codebook_size, self.code_dim
        init = torch.randn(k, d, generator=torch.Generator().manual_seed(self.seed)) / math.sqrt(d)
        if self.mode == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", init.clone())
        self.register_buffer("usage", torch.zeros(k))  # assignments per code since the last restart check
        self.register_buffer("usage_steps", torch.zeros((), dtype=torch.long))  # steps counted in ``usage``
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_counts", torch.zeros(k), persistent=False)
        self.restarted = 0  # codes restarted since the last epoch_metrics()

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description :func:`chainrule.latent.build_vqvae` rebuilds this model from."""
        args = dict(self._init_args)
        return {"model": self.name, "shape": args.pop("shape"), "num_values": args.pop("num_values"),
                "hyperparameters": args}

    @property
    def code_shape(self) -> tuple[int, int, int]:
        """The shape of one code grid as the prior sees it: ``(1, h, w)``."""
        return (1, *self.grid)

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def validate(self, x: Any) -> tuple[torch.Tensor, torch.Size]:
        """Check images ``(*batch, C, H, W)`` of values 0..K-1; returns ``(B, C, H, W)`` long and the batch shape."""
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError):
                raise InputError(f"vqvae: expected images of shape (batch, {', '.join(map(str, self.shape))}), "
                                 f"got {type(x).__name__}") from None
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.shape:
            raise InputError(f"vqvae: expected images of shape (batch, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        batch = x.shape[:-3]
        x = x.reshape(-1, *self.shape)
        if x.is_floating_point():
            if not torch.isfinite(x).all() or not torch.equal(x, x.round()):
                raise InputError(f"vqvae: expected integer pixel values 0..{self.num_values - 1}, got non-integer floats")
        x = x.long()
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_values):
            raise InputError(f"vqvae: pixel values must lie in 0..{self.num_values - 1} (num_values="
                             f"{self.num_values}), got values from {int(x.min())} to {int(x.max())}")
        return x.to(self.device), batch

    def validate_codes(self, z: Any) -> torch.Tensor:
        """Check code grids ``(B, h, w)`` or ``(B, 1, h, w)``; returns ``(B, h, w)`` long."""
        z = torch.as_tensor(z)
        if z.dim() == 4 and z.shape[1] == 1:
            z = z[:, 0]
        if z.dim() != 3 or tuple(z.shape[1:]) != self.grid:
            raise InputError(f"vqvae: expected code grids of shape (batch, {self.grid[0]}, {self.grid[1]}), got {tuple(z.shape)}")
        if z.is_floating_point() or (z.numel() and (int(z.min()) < 0 or int(z.max()) >= self.codebook_size)):
            raise InputError(f"vqvae: codes must be integers in 0..{self.codebook_size - 1}")
        return z.long().to(self.device)

    # ------------------------------------------------------------------ the pieces
    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * (2.0 / (self.num_values - 1)) - 1.0  # to [-1, 1]

    def encode_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output z_e ``(B, d, h, w)`` of validated images ``(B, C, H, W)``."""
        return self.encoder(self._inputs(x))

    def _distances(self, flat: torch.Tensor) -> torch.Tensor:
        """Squared distances ``(N, K)`` of vectors ``(N, d)`` to the codebook."""
        cb = self.codebook
        return flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]

    def encode(self, x: Any) -> torch.Tensor:
        """The codes z* = argmin_k ||z_e - e_k|| of images ``(B, C, H, W)``: ``(B, h, w)`` long."""
        x, _ = self.validate(x)
        ze = self.encode_vectors(x)
        flat = ze.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        return self._distances(flat).argmin(1).reshape(x.shape[0], *self.grid)

    def decoder_params(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's parameters ``(B, H*W, P)`` (one group per pixel) for code grids ``(B, h, w)``."""
        z = self.validate_codes(z)
        e = self.codebook[z].permute(0, 3, 1, 2)  # (B, d, h, w)
        return self._params(e)

    def _params(self, e: torch.Tensor) -> torch.Tensor:
        p = self.decoder(e)  # (B, P, H, W)
        return p.permute(0, 2, 3, 1).reshape(p.shape[0], -1, self.head.num_params)

    def decoder_distribution(self, z: torch.Tensor) -> GroupDistribution:
        """p(x | z): the distribution of every pixel (group of C channels), batch shape ``(B, H*W)``."""
        return self.head(self.decoder_params(z).float())

    def pixel_groups(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> ``(B, H*W, C)``: each pixel's channels, as the head reads them."""
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.shape[0])

    def images_of_groups(self, g: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`pixel_groups`."""
        c, h, w = self.shape
        return g.reshape(g.shape[0], h, w, c).permute(0, 3, 1, 2)

    def reconstruction_log_prob(self, x: Any, z: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | z) in nats ``(B,)``, with the encoder's codes z* unless ``z`` is given."""
        x, _ = self.validate(x)
        z = self.encode(x) if z is None else z
        return self.decoder_distribution(z).log_prob(self.pixel_groups(x)).sum(-1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mode: str = "mean", generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, C, H, W)`` from code grids: the decoder's ``"mode"`` (most probable value per
        pixel), its ``"mean"`` (rounded) or a ``"sample"`` of p(x | z)."""
        dist = self.decoder_distribution(z)
        if mode == "sample":
            g = dist.sample(generator)
        elif mode == "mode":
            g = dist.mode()
        else:
            g = dist.mean().round().clamp(0, self.num_values - 1)
        return self.images_of_groups(g.long())

    # ------------------------------------------------------------------ training
    def _kmeans(self, flat: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """k-means++ seeds then Lloyd steps on vectors ``(N, d)`` -> centres ``(K, d)``."""
        k, n = self.codebook_size, len(flat)
        if n < k:  # fewer vectors than codes: repeat them, jittered, so every code starts distinct
            reps = flat[torch.randint(n, (k - n,), generator=g)]
            flat = torch.cat([flat, reps + 0.01 * flat.std() * torch.randn(reps.shape, generator=g)])
            n = len(flat)
        centres = flat[torch.randint(n, (1,), generator=g)]
        d2 = (flat - centres[0]).pow(2).sum(1)
        for _ in range(1, k):
            p = d2.clamp_min(0) + 1e-12
            nxt = flat[torch.multinomial(p / p.sum(), 1, generator=g)]
            centres = torch.cat([centres, nxt])
            d2 = torch.minimum(d2, (flat - nxt[0]).pow(2).sum(1))
        for _ in range(self.kmeans_iterations):
            assign = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ centres.t() + centres.pow(2).sum(1)[None]).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=k).to(flat.dtype)
            moved = counts > 0
            centres[moved] = sums[moved] / counts[moved, None]
        return centres

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(self.seed)
        centres = self._kmeans(flat.detach().float().cpu(), g).to(self.codebook.device, self.codebook.dtype)
        self.codebook.data.copy_(centres)
        if self.mode == "ema":
            self.ema_sum.copy_(centres)
            self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, assign: torch.Tensor) -> None:
        """EMA codebook step, usage counts and dead-code restarts (training only)."""
        k = self.codebook_size
        counts = torch.bincount(assign, minlength=k).to(self.usage.dtype)
        self.epoch_counts += counts
        decay = self.ema_decay
        self.usage += counts
        self.usage_steps += 1
        if self.mode == "ema":
            sums = torch.zeros(k, self.code_dim, device=flat.device, dtype=flat.dtype).index_add_(0, assign, flat)
            self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing: no division by 0
            self.codebook.data.copy_(self.ema_sum / smoothed[:, None])
        self.steps += 1
        if self.restart_every and int(self.steps) % self.restart_every == 0:
            self.restart_dead_codes(flat)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> int:
        """Move the codes assigned fewer than ``restart_threshold`` times per step since the last
        check onto random vectors of ``flat`` ``(N, d)`` (encoder outputs), then start counting
        anew; returns how many were restarted."""
        per_step = self.usage / max(int(self.usage_steps), 1)
        dead = (per_step < self.restart_threshold).nonzero().reshape(-1)
        self.usage.zero_()
        self.usage_steps.zero_()
        if len(dead) == 0:
            return 0
        g = torch.Generator().manual_seed(self.seed * 1000003 + int(self.steps))
        pick = torch.randint(len(flat), (len(dead),), generator=g).to(flat.device)
        new = flat[pick].to(self.codebook.dtype)
        self.codebook.data[dead] = new
        if self.mode == "ema":
            self.ema_sum[dead] = new
            self.ema_count[dead] = 1.0
        self.restarted += len(dead)
        return len(dead)

    def training_loss(self, x: torch.Tensor, context: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainer's objective on a validated batch ``(B, C, H, W)``: returns the reconstruction
        NLL -log p(x | z_q) ``(B,)`` in nats (what the trainer logs) and the extra loss terms
        (commitment, and the codebook loss without EMA), a scalar added to mean NLL / D."""
        if context is not None:
            raise InputError("vqvae: the VQ-VAE takes no context (train the prior class-conditionally instead)")
        ze = self.encode_vectors(x)  # (B, d, h, w)
        flat = ze.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        if self.training and not bool(self.initialized):
            self._initialize(flat)
        assign = self._distances(flat.detach().float()).argmin(1)
        zq = self.codebook[assign]  # (N, d)
        commitment = F.mse_loss(flat, zq.detach())
        extra = self.beta * commitment
        if self.mode == "loss":
            extra = extra + F.mse_loss(zq, flat.detach())
        if self.training:
            self._update(flat.detach().float(), assign)
        st = flat + (zq - flat).detach()  # straight-through: the decoder's gradient reaches the encoder
        e = st.reshape(x.shape[0], *self.grid, self.code_dim).permute(0, 3, 1, 2)
        nll = -self.head(self._params(e).float()).log_prob(self.pixel_groups(x)).sum(-1)
        return nll, extra

    def epoch_metrics(self) -> dict[str, float]:
        """Codebook usage over the training batches since the last call (then reset): the perplexity
        exp(H) of the code frequencies, the share of codes used at least once and the number of
        dead codes restarted."""
        counts = self.epoch_counts
        total = float(counts.sum())
        if total == 0:
            return {}
        p = counts / total
        h = -float((p[p > 0] * p[p > 0].log()).sum())
        out = {"codebook_perplexity": math.exp(h), "codebook_used": float((counts > 0).float().mean()),
               "codes_restarted": float(self.restarted)}
        self.epoch_counts.zero_()
        self.restarted = 0
        return out

    @torch.no_grad()
    def evaluate_reconstruction(self, data: Any, batch_size: int = 256) -> torch.Tensor:
        """-log p(x | z*) ``(N,)`` float64 nats of every example, z* the encoder's codes."""
        was = self.training
        self.eval()
        try:
            out = [-self.reconstruction_log_prob(data[a:a + batch_size]).double().cpu()
                   for a in range(0, len(data), batch_size)]
        finally:
            self.train(was)
        return torch.cat(out)

    @torch.no_grad()
    def encode_all(self, data: Any, batch_size: int = 256) -> torch.Tensor:
        """The codes ``(N, h, w)`` long of every example of ``data`` ``(N, C, H, W)``."""
        was = self.training
        self.eval()
        try:
            out = [self.encode(data[a:a + batch_size]).cpu() for a in range(0, len(data), batch_size)]
        finally:
            self.train(was)
        return torch.cat(out) if out else torch.zeros(0, *self.grid, dtype=torch.long)

    def validation_nll(self, data: Any, context: Any = None, batch_size: int = 256) -> torch.Tensor:
        """What the trainer validates by: the reconstruction NLL -log p(x | z*) ``(N,)`` nats."""
        if context is not None:
            raise InputError("vqvae: the VQ-VAE takes no context")
        return self.evaluate_reconstruction(data, batch_size)
