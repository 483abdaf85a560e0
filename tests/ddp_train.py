"""A few training steps of a small transformer block built on rmsnorm, on one GPU or under DDP.

Run by tests/test_multi_gpu.py, as `python -m torch.distributed.run --nproc_per_node=K tests/ddp_train.py
--backend B --out FILE [--compile]`: every world size trains on the same global batch (each rank on
its equal share), so the losses and the final weights of K = 1 and K = 2 agree up to the order of
the gradient reduction. Rank 0 saves them, with the graph breaks torch.compile counted (--compile
compiles the block with fullgraph=True, so a break inside it fails the run).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import rmsnorm

D_MODEL = 128
GLOBAL_BATCH = 8
SEQUENCE = 16
STEPS = 3
LEARNING_RATE = 0.1


class Block(torch.nn.Module):
    """Pre-norm transformer block; attention is stood in for by a Linear. test_compile.py uses it too."""

    def __init__(self, d_model: int, backend: str):
        super().__init__()
        self.norm1 = rmsnorm.RMSNorm(d_model, eps=1e-6, backend=backend)
        self.mix = torch.nn.Linear(d_model, d_model)
        self.norm2 = rmsnorm.RMSNorm(d_model, eps=1e-6, backend=backend)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d_model, 4 * d_model), torch.nn.GELU(), torch.nn.Linear(4 * d_model, d_model)
        )
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        y, residual = rmsnorm.add_rms_norm(self.mix(y), x, self.norm2.weight, self.norm2.eps, backend=self.backend)
        return self.mlp(y) + residual


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:  # a CPU run (gloo, the torch backend) checks this script itself on a machine without GPUs
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)

    torch.manual_seed(0)
    model = Block(D_MODEL, args.backend).to(device)
    inputs = torch.randn(STEPS, GLOBAL_BATCH, SEQUENCE, D_MODEL, device=device)
    targets = torch.randn(STEPS, GLOBAL_BATCH, SEQUENCE, D_MODEL, device=device)
    share = GLOBAL_BATCH // world
    mine = slice(rank * share, (rank + 1) * share)
    # Compiled inside DDP, with fullgraph=True: a graph break anywhere in the block raises, and DDP's
    # own Python (its logger, its hooks) stays outside the graph.
    trained = torch.compile(model, fullgraph=True) if args.compile else model
    if world > 1:
        ddp_devices = [device] if device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(trained, device_ids=ddp_devices)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)

    losses = []
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = (trained(inputs[step, mine]) - targets[step, mine]).square().mean()
        loss.backward()  # DDP averages the gradients of the equal shares: the global batch's gradient
        optimizer.step()
        global_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(global_loss)
            global_loss /= world
        losses.append(global_loss.item())

    if rank == 0:
        from torch._dynamo.utils import counters

        torch.save(
            {
                "losses": losses,
                "weights": {name: p.detach().cpu() for name, p in model.named_parameters()},
                "graph_breaks": dict(counters["graph_break"]),
            },
            args.out,
        )
    if world > 1:
        dist.barrier()  # rank 0 saves first; tearing down under a rank still saving has hung gloo
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
