"""6. The Hessian diagonal: what the notebook computed, and the true diagonal.

The notebook's loop differentiates each gradient entry with respect to its
whole parameter tensor, so it computes each parameter's full numel x numel
Hessian block (10,000 numbers for ``linear.2.weight``), not the diagonal. The
true diagonal is the 141 numbers on those blocks' diagonals:
``gradgraph.hessian_diagonal`` gets it exactly or estimates it from a few
Hessian-vector products. The top eigenvalue (Lanczos) and the spectral density
(stochastic Lanczos quadrature) are checked against the dense Hessian.
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from simplenet import (  # noqa: E402
    dense_hessian_float64,
    seeded_model_and_loss,
    training_data,
)

import gradgraph  # noqa: E402

OUT = Path(os.environ.get("GRADGRAPH_OUT", "out")) / Path(__file__).stem
OUT.mkdir(parents=True, exist_ok=True)

model, loss = seeded_model_and_loss()

# The notebook's loop, as written there (named hessian_digonal in the notebook).
blocks_notebook = {}
for name, param in model.named_parameters():
    jaco = torch.autograd.grad(loss, param, create_graph=True)[0]
    rows = []
    for j in jaco.view(-1):  # one backward per gradient entry
        hess = torch.autograd.grad(j, param, retain_graph=True)[0]
        rows.append(hess.view(-1))
    blocks_notebook[name] = torch.cat(rows)
print("what the notebook's loop returns, per parameter:")
for name, flat in blocks_notebook.items():
    numel = dict(model.named_parameters())[name].numel()
    print(f"  {name:16s} numel {numel:3d} -> {flat.numel():6d} numbers = numel^2")
    assert flat.numel() == numel**2
total_blocks = sum(b.numel() for b in blocks_notebook.values())
n = sum(p.numel() for p in model.parameters())
print(f"total: {total_blocks} numbers; the Hessian diagonal has {n}")

blocks = gradgraph.hessian_blocks(loss, model, progress=False)
diag = gradgraph.hessian_diagonal(loss, model, method="exact", progress=False)
for name, block in blocks.items():
    numel = block.shape[0]
    # float32 numbers by different routes (batched and looped double backward,
    # propagation) agree to float32 rounding of a second derivative
    float32 = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(
        block, blocks_notebook[name].view(numel, numel), **float32
    )
    torch.testing.assert_close(diag[name].reshape(-1), block.diagonal(), **float32)

# The dense float64 reference: its diagonal and its eigenvalues.
x, y = training_data()
dense = dense_hessian_float64(model, x, y)
eigenvalues = torch.linalg.eigvalsh(dense)
exact = torch.cat([d.reshape(-1) for d in diag.values()]).double()
torch.testing.assert_close(exact, dense.diagonal(), rtol=1e-4, atol=1e-5)
print("\nexact diagonal matches the dense float64 Hessian's diagonal")


def relative_error(estimate):
    flat = torch.cat([d.reshape(-1) for d in estimate.values()]).double()
    return ((flat - exact).norm() / exact.norm()).item()


print("estimated diagonals (relative error vs exact):")
errors, estimates = {}, {}
for method, matvecs in (("hutchinson", 128), ("xdiag", 32), ("xdiag", 128)):
    estimate = gradgraph.hessian_diagonal(
        loss, model, method=method, matvecs=matvecs, seed=0, progress=False
    )
    errors[method, matvecs] = relative_error(estimate)
    estimates[method, matvecs] = torch.cat([d.reshape(-1) for d in estimate.values()])
    print(f"  {method:10s} {matvecs:3d} HVPs: {errors[method, matvecs]:.3f}")
# an estimator improves with its budget; XDiag beats plain Hutchinson here
assert errors["xdiag", 128] < errors["xdiag", 32]
assert errors["xdiag", 128] < errors["hutchinson", 128]
print(
    "The difference: the notebook's blocks hold every second derivative within one"
    f" parameter tensor ({total_blocks} numbers, one backward per entry); the"
    f" diagonal keeps only d2L/dθi2 ({n} numbers), which the estimators approximate"
    " from a few Hessian-vector products without a backward per entry."
)

values, _ = gradgraph.hessian_eigenvalues(loss, model, k=1, seed=0, progress=False)
top = values[0].item()
print(f"\ntop eigenvalue: Lanczos {top:.4f}, dense eigvalsh {eigenvalues[-1]:.4f}")
assert abs(top - eigenvalues[-1].item()) <= 1e-3 * abs(eigenvalues[-1].item())

# stochastic Lanczos quadrature: probes x steps HVPs (fewer in the short run)
probes, steps = (2, 24) if os.environ.get("GRADGRAPH_FAST") == "1" else (4, 40)
density = gradgraph.hessian_density(
    loss, model, probes=probes, steps=steps, seed=0, progress=False
)
low, high = eigenvalues[0].item(), eigenvalues[-1].item()
slack = 1e-3 * max(abs(low), abs(high))
assert low - slack <= density.nodes.min() and density.nodes.max() <= high + slack
print(
    f"spectral density: {density.nodes.numel()} Ritz values in [{low:.3g}, {high:.3g}]"
)

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
image = left.imshow(dense.abs().add(1e-8).log10(), cmap="viridis")
start = 0
for block in blocks.values():  # outline the notebook's per-parameter blocks
    size = block.shape[0]
    left.add_patch(
        plt.Rectangle((start - 0.5, start - 0.5), size, size, fill=False, color="w")
    )
    start += size
left.set(title="log10 |H|, 141 x 141; boxes: the notebook's blocks")
fig.colorbar(image, ax=left, shrink=0.8)
density.plot(ax=right, label=f"SLQ density ({probes} probes x {steps} steps)")
right.plot(eigenvalues.numpy(), [1e-6] * n, "|", color="k", label="exact eigenvalues")
right.axvline(top, color="red", linestyle="--", label=f"top eigenvalue {top:.1f}")
right.set(title="Hessian spectral density", xlabel="eigenvalue")
right.legend()
fig.tight_layout()
for suffix in ("png", "svg"):
    fig.savefig(OUT / f"hessian_spectrum.{suffix}", dpi=100)
print("wrote", OUT / "hessian_spectrum.svg")

fig, ax = plt.subplots(figsize=(12, 4))
ax.plot(exact.numpy(), "k.-", label="exact diagonal (hessian_diagonal)", lw=1)
for (method, matvecs), values in estimates.items():
    ax.plot(values.numpy(), ".", alpha=0.7, label=f"{method}, {matvecs} HVPs")
start = 0
for name, block in blocks.items():
    ax.axvline(start - 0.5, color="grey", lw=0.5)
    ax.text(start, ax.get_ylim()[1], name, fontsize=7, va="top", rotation=90)
    start += block.shape[0]
ax.set(title="The Hessian diagonal, exact and estimated", xlabel="parameter entry")
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
for suffix in ("png", "svg"):
    fig.savefig(OUT / f"diagonal.{suffix}", dpi=100)
print("wrote", OUT / "diagonal.svg")
