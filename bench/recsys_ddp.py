"""PyTorch DDP peer for kiln's recsys models (bench/recsys.sh): the same MMoE and
M3oE architectures as algorithms/recsys/src/models/ (widths, activations, norms,
input layer), trained with DistributedDataParallel over gloo on N CPU processes,
AdamW, equal global batch. Prints the median samples/s over logged windows.

  python bench/recsys_ddp.py {mmoe|m3oe} <ranks> <global_batch> <steps>
"""
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

USERS, ITEMS, DOMAINS, DENSE, EMB, HIDDEN, TOWER, EXPERTS, TASKS = 2000, 1000, 3, 8, 16, 64, 32, 4, 2


class Input(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(USERS, EMB)
        self.item = nn.Embedding(ITEMS, EMB)
        self.domain = nn.Embedding(DOMAINS, 4)
        for e in (self.user, self.item, self.domain):
            nn.init.normal_(e.weight, 0.0, 0.05)
        self.width = 3 * EMB + 4 + DENSE

    def forward(self, u, i, d, x):
        a, b = self.user(u), self.item(i)
        return torch.cat([a, b, a * b, self.domain(d), x], 1)


def mlp(dims, norm):
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers.append(nn.Linear(a, b))
        if norm:
            layers.append(nn.LayerNorm(b))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def tower(i, h):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, 1))


class Mmoe(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = Input()
        w = self.inp.width
        self.experts = nn.ModuleList([mlp([w, HIDDEN, HIDDEN], False) for _ in range(EXPERTS)])
        self.gates = nn.ModuleList([nn.Linear(w, EXPERTS) for _ in range(TASKS)])
        self.towers = nn.ModuleList([tower(HIDDEN, TOWER) for _ in range(TASKS)])

    def forward(self, u, i, d, x):
        x = self.inp(u, i, d, x)
        outs = torch.stack([e(x) for e in self.experts], 1)
        feats = [(outs * g(x).softmax(-1).unsqueeze(-1)).sum(1) for g in self.gates]
        return torch.cat([t(h) for t, h in zip(self.towers, feats)], 1)


class M3oe(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = Input()
        w, h, eo = self.inp.width, HIDDEN, TOWER
        bound = 1.0 / w ** 0.5
        self.shared_w = nn.Parameter(torch.empty(w, h).uniform_(-bound, bound))
        self.shared_b = nn.Parameter(torch.zeros(h))
        self.domain_w = nn.Parameter(torch.ones(DOMAINS, w, h))
        self.domain_b = nn.Parameter(torch.zeros(DOMAINS, h))
        self.star_mlp = mlp([h, h], True)
        self.skip = mlp([w, h], True)
        self.shared = nn.ModuleList([mlp([h, h, eo], True) for _ in range(EXPERTS)])
        self.dom = nn.ModuleList([mlp([h, h, eo], True) for _ in range(DOMAINS)])
        self.task = nn.ModuleList([mlp([h, h, eo], True) for _ in range(TASKS)])
        self.gates = nn.ModuleList([nn.Linear(h, EXPERTS) for _ in range(DOMAINS * TASKS)])
        self.towers = nn.ModuleList([nn.Sequential(nn.Linear(eo, eo), nn.LayerNorm(eo), nn.ReLU(), nn.Linear(eo, 1)) for _ in range(DOMAINS * TASKS)])
        # Fixed structure (kiln's search = false): sigmoid(1).
        self.register_buffer("s", torch.sigmoid(torch.ones(4)))

    def forward(self, u, i, d, x):
        x = self.inp(u, i, d, x)
        n = x.shape[0]
        star = torch.stack([x @ (self.shared_w * self.domain_w[k]) + self.domain_b[k] for k in range(DOMAINS)], 1)
        star = star[torch.arange(n), d] + self.shared_b
        e = self.star_mlp(star.relu()) + self.skip(x)
        shared = torch.stack([m(e) for m in self.shared], 1)
        dom = [m(e) for m in self.dom]
        task = [m(e) for m in self.task]
        a_d, a_t, b_d, b_t = self.s

        def group(g, me, beta):
            rest = sum(v for j, v in enumerate(g) if j != me)
            return g[me] * beta + rest * ((1 - beta) / (len(g) - 1))

        gate_in = e.detach()
        per_domain = []
        for dd in range(DOMAINS):
            logits = []
            for t in range(TASKS):
                k = dd * TASKS + t
                fused = (shared * self.gates[k](gate_in).softmax(-1).unsqueeze(-1)).sum(1) + group(dom, dd, b_d) * a_d + group(task, t, b_t) * a_t
                logits.append(self.towers[k](fused))
            per_domain.append(torch.cat(logits, 1))
        return torch.stack(per_domain, 1)[torch.arange(n), d]


def worker(rank, world, model_name, global_batch, steps, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", "29533"
    torch.set_num_threads(max(1, 2 // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = {"mmoe": Mmoe, "m3oe": M3oe}[model_name]()
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(ddp.parameters(), lr=0.01, weight_decay=0.0)
    per = global_batch // world
    g = torch.Generator().manual_seed(rank)
    window, rates, t0 = 10, [], time.perf_counter()
    for step in range(steps):
        u = torch.randint(0, USERS, (per,), generator=g)
        i = torch.randint(0, ITEMS, (per,), generator=g)
        d = torch.randint(0, DOMAINS, (per,), generator=g)
        x = torch.randn(per, DENSE, generator=g)
        y = torch.randint(0, 2, (per, TASKS), generator=g).float()
        loss = F.binary_cross_entropy_with_logits(ddp(u, i, d, x), y) * TASKS
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % window == 0:
            t1 = time.perf_counter()
            rates.append(window * global_batch / (t1 - t0))
            t0 = t1
    if rank == 0:
        r = sorted(rates[1:])
        out.put(r[len(r) // 2])
    dist.destroy_process_group()


def main():
    name, world, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, name, batch, steps, q)) for r in range(world)]
    for p in procs:
        p.start()
    med = q.get()
    for p in procs:
        p.join()
    print(f"{med:.0f}")


if __name__ == "__main__":
    main()
