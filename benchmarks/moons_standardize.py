"""RNADE on two moons with and without --standardize, against scikit-learn's 10-component Gaussian
mixture on the same test split (BENCHMARKS.md §8). Run in an empty folder:

    PYTHONPATH=SRC OMP_NUM_THREADS=1 python benchmarks/moons_standardize.py
"""
import json, subprocess, sys, numpy as np
from sklearn.datasets import make_moons
from sklearn.mixture import GaussianMixture
x, _ = make_moons(3000, noise=0.1, random_state=0)
x = x.astype(np.float32)
np.save("moons.npy", x)
# the dataset's own split (as chainrule reads a .npy): read it back to score sklearn on the same test split
import chainrule
ds = chainrule.load_dataset("moons.npy")
gm = GaussianMixture(10, random_state=0).fit(ds.train.numpy())
print("sklearn GMM(10) test NLL nats/example", -gm.score(ds.test.numpy()))
for extra in ([], ["--standardize"]):
    out = "run" + ("_std" if extra else "")
    subprocess.run([sys.executable, "-m", "chainrule", "train", "rnade", "--dataset", "moons.npy", "--epochs", "300",
                    "--patience", "20", "--threads", "1", "--no-progress", "--out", out, "--force", "--num-samples", "1000",
                    *extra], check=True)
    r = json.load(open(f"{out}/results.json"))
    s = np.load(f"{out}/samples.npy")
    lo, hi = x.min(0), x.max(0)
    outside = float(((s < lo) | (s > hi)).any(1).mean())
    print(out, "test NLL", r["test"]["nll_nats"], "epochs", r["epochs_run"], "outside range", outside)
