"""CPU latency of dynamic sparse training's models: the unstructured model dense vs with sparse kernels, and the
structured model physically pruned.

    .venv/bin/python benchmarks/sparse_latency.py                  # after `kedro run --pipeline=dst`
    .venv/bin/python benchmarks/sparse_latency.py --batch-sizes 1 1000 --repeats 31

Rows, every model timed interleaved in one process (ratios compare like with like):
- ``dense``: the multi-exit network before pruning (the unpruned reference);
- ``unstructured, dense kernels``: the DST model as trained (zeros in dense tensors: no faster by itself);
- ``unstructured, CSR linear``: its linear layers run as ``torch.sparse`` CSR matrix products (convs stay dense:
  PyTorch has no sparse convolution kernel on CPU);
- ``structured, pruned``: the structured DST mask removed physically (a smaller dense network).
The table prints whatever it shows; a sparse kernel pays index overhead that only high sparsity repays.
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch
from torch import nn

from evoprune.core.cost import interleaved_median_seconds
from evoprune.core.data import images_to_float
from evoprune.core.masking import prune_physically
from evoprune.core.models.adapter import input_shape
from evoprune.core.sparse import nonzero_flops, weight_sparsity
from evoprune.core.units import build_layout
from evoprune.datasets import PrunedMembersDataset, SparseModelDataset, TensorDictDataset, TorchModelDataset


class CsrLinear(nn.Module):
    """``nn.Linear`` whose weight is a CSR sparse matrix: y = (W @ x^T)^T + b."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        out = torch.sparse.mm(self.weight, x.t()).t()
        return out if self.bias is None else out + self.bias


def with_csr_linears(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose linear layers compute with CSR weights."""
    out = copy.deepcopy(model).eval()
    for module in list(out.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, CsrLinear(child))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", default="data", help="the run's outputs folder (conf globals `outputs`)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dense = TorchModelDataset(filepath=f"{args.outputs}/06_models/multi_exit_model.pt").load().eval()
    sparse = SparseModelDataset(filepath=f"{args.outputs}/06_models/dst_sparse_model.pt").load()["model"].eval()
    structured = PrunedMembersDataset(filepath=f"{args.outputs}/06_models/dst_structured_members.pt").load()
    net = structured["model"].eval()
    pruned = prune_physically(net, build_layout(net, input_shape(net)), structured["masks"][0], input_shape(net))
    test = TensorDictDataset(filepath=f"{args.outputs}/05_model_input/fashion_mnist_test.pt").load()
    models = {
        "dense": dense,
        "unstructured, dense kernels": sparse,
        "unstructured, CSR linear": with_csr_linears(sparse),
        "structured, pruned": pruned.eval(),
    }
    flops = {
        "dense": nonzero_flops(dense)["total"],
        "unstructured, dense kernels": nonzero_flops(sparse)["total"],
        "unstructured, CSR linear": nonzero_flops(sparse)["total"],
        "structured, pruned": nonzero_flops(pruned)["total"],
    }
    kept = 1.0 - weight_sparsity(sparse)["total"]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"unstructured DST keeps {100 * kept:.2f}% of the conv/linear weights\n")
    header = ["model", "non-zero MFLOPs"] + [f"ms @ batch {b}" for b in args.batch_sizes]
    header += [f"speed-up @ {b}" for b in args.batch_sizes]
    rows = {name: [name, f"{flops[name] / 1e6:.3f}"] for name in models}
    speedups = {name: [] for name in models}
    for b in args.batch_sizes:
        x = images_to_float(test["images"][:b])
        with torch.inference_mode():
            seconds = interleaved_median_seconds({n: (lambda m=m, x=x: m(x)) for n, m in models.items()}, args.repeats)
        for name in models:
            rows[name].append(f"{1e3 * seconds[name]:.3f}")
            speedups[name].append(f"{seconds['dense'] / seconds[name]:.2f}x")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in models:
        print("| " + " | ".join(rows[name] + speedups[name]) + " |")


if __name__ == "__main__":
    main()
