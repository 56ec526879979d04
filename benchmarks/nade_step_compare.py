"""One NADE-500 training step (batch 100 of 28x28 bits, forward + backward + Adam, 1 thread): the
median of N steps, for comparing two commits side by side. Run it alternately with each commit's
source first on the path (the same script works on the contract-v1 and v2 APIs):

    for i in 1 2 3; do PYTHONPATH=/path/to/old/src python benchmarks/nade_step_compare.py 15; \
                       PYTHONPATH=src python benchmarks/nade_step_compare.py 15; done
"""
import sys, time, torch
torch.set_num_threads(1)
import chainrule
torch.manual_seed(0)
m = chainrule.create_model("nade", (28, 28), 2, hidden_size=500)
opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.randint(2, (100, 28, 28))
new = hasattr(m, "resolve_order")
def step():
    xv, _ = m.validate(x)
    if new:
        params = m(xv)
        lp = m.head(params).log_prob(m.groups.gather(xv.reshape(100, -1))).sum(-1)
    else:
        lp = m.training_log_prob(xv)
    loss = -lp.mean()
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3): step()
ts = []
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 15):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
ts.sort(); print("new" if new else "old", "median step", round(ts[len(ts)//2], 4))
