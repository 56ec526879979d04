"""PixelDefend-style detection of adversarial examples by their likelihood (Song, Kim, Nowozin, Ermon
& Kushman 2018, "PixelDefend: Leveraging Generative Models to Understand and Defend against
Adversarial Examples", section 3).

A small convolutional classifier is trained on 8-bit MNIST; adversarial test images are made
against it with FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018) at L-infinity radius
``eps`` and rounded back to the 256 grey levels (an image a user could store). A trained
autoregressive model of 8-bit MNIST (``RUN``) then scores clean and adversarial images by their
NLL in bits/dim (``chainrule.apps.anomaly``); the script reports the classifier's accuracy on
each set and how well the NLL tells the sets apart (AUROC, AUPR, FPR at 95% TPR with bootstrap
intervals), and PixelDefend's p-values: the rank of an image's NLL among the training images'.

    python benchmarks/pixeldefend_mnist.py runs/mnist8_gated --num-test 1000 --threads 1

The attacks are not our subject and are written in a few lines here; the model, the likelihood
and the detection metrics are the library's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, machine, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.apps.anomaly import detection_metrics, nll_bits_per_dim  # noqa: E402
from chainrule.apps.pipeline import checkpoint_dir  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402


def classifier() -> nn.Module:
    """A LeNet-sized CNN on images in [0, 1]: 2 conv layers, 1 hidden dense layer (~0.2 M parameters)."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.cat([net(b).argmax(1) for b in x.split(500)]).eq(y).float().mean())


def attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float) -> torch.Tensor:
    """L-infinity attack on images in [0, 1]: FGSM when ``steps == 1`` (one step of size eps), else
    PGD from a random start in the ball; the result rounded to the 256 grey levels (integers 0..255)."""
    g = torch.Generator().manual_seed(0)
    adv = x.clone() if steps == 1 else (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    size = eps if steps == 1 else step_size
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(net(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = x + (adv + size * grad.sign() - x).clamp(-eps, eps)
            adv = adv.clamp(0, 1)
    return (adv.detach() * 255).round().long()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run of an autoregressive model of 8-bit MNIST (num_values 256)")
    ap.add_argument("--num-test", type=int, default=1000, help="clean test images attacked (the first N)")
    ap.add_argument("--num-reference", type=int, default=2000, help="training images whose NLL rank gives p-values")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.03, 0.1, 0.3], help="L-infinity radii in [0, 1] (0.03 is about 8/255)")
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--classifier-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = chainrule.load(checkpoint_dir(args.run)).eval()
    if model.num_values != 256 or tuple(model.shape) != (1, 28, 28):
        sys.exit(f"{args.run}: needs a model of 8-bit MNIST (shape (1, 28, 28), 256 values); it has "
                 f"{tuple(model.shape)}, {model.num_values} values")
    ds = load_dataset("mnist", data_dir())
    xtr, ytr = ds.split("train")
    xte, yte = ds.split("test")
    xte, yte = xte[: args.num_test], torch.as_tensor(yte[: args.num_test]).long()
    t0 = time.perf_counter()
    net = train_classifier(xtr.float() / 255, torch.as_tensor(ytr).long(), args.classifier_epochs, args.seed)
    print(f"classifier: {args.classifier_epochs} epochs in {time.perf_counter() - t0:.0f} s, clean test accuracy "
          f"{100 * accuracy(net, ds.test.float() / 255, torch.as_tensor(ds.split('test')[1]).long()):.2f}%", flush=True)

    ref = nll_bits_per_dim(model, xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))[: args.num_reference]])
    clean = nll_bits_per_dim(model, xte)

    def p_values(nll: np.ndarray) -> np.ndarray:  # PixelDefend: the fraction of training images at least as unlikely
        return (1 + (ref[None, :] >= nll[:, None]).sum(1)) / (1 + len(ref))

    rows = [{"attack": "clean", "eps": 0.0, "accuracy": accuracy(net, xte.float() / 255, yte),
             "nll_bits_per_dim": float(clean.mean()), "median_p_value": float(np.median(p_values(clean)))}]
    print(f"clean: accuracy {100 * rows[0]['accuracy']:.2f}%, NLL {clean.mean():.4f} bits/dim", flush=True)
    for eps in args.eps:
        for name, steps in (("FGSM", 1), ("PGD", args.pgd_steps)):
            t0 = time.perf_counter()
            adv = attack(net, xte.float() / 255, yte, eps, steps, step_size=2.5 * eps / steps)
            nll = nll_bits_per_dim(model, adv)
            res = detection_metrics(clean, nll, 1000, seed=args.seed, score="nll")
            row = {"attack": name, "eps": eps, "accuracy": accuracy(net, adv.float() / 255, yte),
                   "nll_bits_per_dim": float(nll.mean()), "median_p_value": float(np.median(p_values(nll))),
                   **res.as_dict(), "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"{name} eps {eps:g}: accuracy {100 * row['accuracy']:.2f}%, NLL {nll.mean():.4f} bits/dim, "
                  f"median p-value {row['median_p_value']:.4f}, AUROC {res['auroc']}, "
                  f"FPR@95%TPR {res['fpr_at_95_tpr']}", flush=True)
    write_result("pixeldefend_mnist", {"machine": machine(), "args": vars(args), "run": str(args.run),
                                       "model": model.name, "reference_nll_bits_per_dim": float(ref.mean()),
                                       "rows": rows})


if __name__ == "__main__":
    main()
