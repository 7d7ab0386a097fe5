"""Before/after timings of the speed levers tried for SchNet training on CPU (``docs/performance.md``).

Same model and batches as ``scripts/bench_peers.py`` (SchNet 128/128/3/50/5 Å, batches of 100 molecules, Adam):
energy training on QM9 molecules and energy + force training on perturbed copies of the 21-atom C7H12O2. Each
variant runs in its own process (the allocator is a per-process choice) and reports the median milliseconds per
training step over ``--repeats`` passes of 5 batches after 2 warm-up passes.

Variants:

- ``baseline``: atomnet as shipped (glibc malloc tuned by ``atomnet.runtime.tune_allocator``, the C++ fused cfconv
  kernels of ``atomnet.nn.fused`` and, for energy training, the fused filter network of ``atomnet.nn.fused_filter``);
- ``unfused-filter-network``: energy training with the filter network as torch ops before the cfconv kernel
  (atomnet before ``atomnet.nn.fused_filter``; force training is unchanged);
- ``plain-cfconv``: ``ATOMNET_FUSED=0``, the cfconv as three module calls (gather, product, ``index_add``): atomnet
  before the C++ kernels;
- ``glibc-default``: ``ATOMNET_MALLOC=default`` (glibc's own mmap/trim thresholds);
- ``tcmalloc``: ``libtcmalloc_minimal.so.4`` preloaded (if installed);
- ``chunked-pairs``: the filter network and cfconv evaluated over blocks of ``--chunk`` unordered pairs, so the
  (pairs × F) intermediates of a block could stay in cache;
- ``one-first-layer``: the first layer of all filter networks as one (n_rbf → T·F) matrix product (they share the
  radial basis), split per interaction;
- ``python-fused-cfconv``: gather × filter → neighbour sum as one Python autograd function of torch ops that saves only the atom features
  and the filters (not the (pairs × F) gathered features) and recomputes the gathers in its backward, which is
  itself differentiable (its input gradient is the same function with i and j swapped), so force training's
  double backward works; gives the same energies, forces and parameter gradients (checked in float64);
- ``unfolded-cutoff``: the filters W ∘ f_c formed as an (pairs × F) array before the fused kernel (atomnet before
  the cutoff was folded into the kernel as a per-row scale; affects energy training only);
- ``module-filter-network``: the filter networks run layer by layer as their ``nn.Sequential`` with torch's
  softplus and a separate ``− ln 2`` (atomnet before ``FilterNetwork.raw``'s short route, and without the fused
  filter network);
- ``ops-scale-grads``: force training's create_graph backward of the cfconv with the cutoff folded in as
  differentiable torch ops (W ∘ f_c, G ∘ f_c and Σ_f G ∘ W, each differentiated again by autograd: atomnet before
  ``atomnet.nn.fused._OuterGrads``, whose backward is one kernel pass);
- ``fused-adam``: ``torch.optim.Adam(fused=True)``, the optimiser ``atomnet train`` uses (every other variant, and
  every package in ``bench_peers.py``, steps the default foreach Adam);
- ``compiled``: ``torch.compile(dynamic=True)`` of the energy model (energy training only: torch.compile does not
  support the double backward of force training);
- ``omp-passive``: ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep at once after each parallel region: atomnet
  before :func:`atomnet.runtime.bounded_openmp_spin`);
- ``omp-default``: GNU OpenMP's own waiting (300,000 spins, ≈ 3 ms; ``ATOMNET_OMP_WAIT=default``), what torch
  does when atomnet is imported after it.

``--busy N`` runs N busy-looping processes beside every measurement: cores shared with other work, where the
OpenMP wait policy matters most.

    python scripts/bench_levers.py --threads 2 --json docs/performance/levers.json
    python scripts/bench_levers.py --variants baseline --profile        # where a step's time goes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    "baseline", "glibc-default", "tcmalloc", "chunked-pairs", "one-first-layer", "python-fused-cfconv",
    "plain-cfconv", "unfolded-cutoff", "module-filter-network", "ops-scale-grads", "fused-adam", "compiled",
    "omp-passive", "omp-default", "unfused-filter-network",
)  # fmt: skip
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def patch_chunked(chunk: int) -> None:
    """SchNetInteraction.forward over blocks of ``chunk`` unordered pairs (mirrored batches)."""
    from atomnet.models import schnet

    def forward(self, x, rbf, fcut, pair_i, pair_j):
        import torch

        h = rbf.shape[0]
        features = self.in2f(x)
        out = features.new_zeros(features.shape)
        for a in range(0, h, chunk):
            b = min(a + chunk, h)
            filters = self.filter_network(rbf[a:b], fcut[a:b])
            i = torch.cat([pair_i[a:b], pair_i[h + a : h + b]])
            j = torch.cat([pair_j[a:b], pair_j[h + a : h + b]])
            out = out.index_add(0, i, self.cfconv.product(self.cfconv.gather(features, j), filters))
        return self.residual(x, self.f2out(out))

    schnet.SchNetInteraction.forward = forward


def patch_one_first_layer() -> None:
    """SchNet.atomic_outputs with the first filter layers of all interactions as one matrix product."""
    import torch

    from atomnet.models import schnet

    def atomic_outputs(self, batch, vectors):
        rbf, fcut = self.radial(batch, vectors)
        x = self.embedding(batch.numbers)
        firsts = [it.filter_network.net[0] for it in self.interactions]
        hidden = torch.nn.functional.linear(
            rbf, torch.cat([f.weight for f in firsts]), torch.cat([f.bias for f in firsts])
        ).split(firsts[0].out_features, dim=1)
        for it, h in zip(self.interactions, hidden, strict=True):
            net = it.filter_network.net
            filters = net[2](net[1](h)) * fcut[:, None]
            x = it.residual(x, it.f2out(it.cfconv(it.in2f(x), filters, batch.pair_i, batch.pair_j)))
        return self.output(x).squeeze(-1), {}

    schnet.SchNet.atomic_outputs = atomic_outputs


def patch_fused_cfconv() -> None:
    """CFConv.forward as one autograd function (see the module docstring)."""
    import torch

    from atomnet.nn import cfconv

    class FusedCFConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, filters, i, j):
            gathered, n = x.index_select(0, j), filters.shape[0]
            if gathered.shape[0] == 2 * n:  # mirrored pairs: one filter for both directions
                messages = (gathered.view(2, n, -1) * filters).view(2 * n, -1)
            else:
                messages = gathered * filters
            ctx.save_for_backward(x, filters, i, j)
            return x.new_zeros(x.shape[0], messages.shape[1]).index_add_(0, i, messages)

        @staticmethod
        def backward(ctx, grad):
            x, filters, i, j = ctx.saved_tensors
            grad_x = grad_filters = None
            if ctx.needs_input_grad[0]:
                grad_x = FusedCFConv.apply(grad, filters, j, i)
            if ctx.needs_input_grad[1]:
                product, n = grad.index_select(0, i) * x.index_select(0, j), filters.shape[0]
                grad_filters = product.view(2, n, -1).sum(0) if product.shape[0] == 2 * n else product
            return grad_x, grad_filters, None, None

    cfconv.CFConv.forward = lambda self, x, filters, pair_i, pair_j: FusedCFConv.apply(
        x, filters, pair_i, pair_j
    )
    patch_unfolded_cutoff()  # SchNet would otherwise call the C++ kernels directly with the cutoff folded in


def patch_unfolded_cutoff() -> None:
    """SchNet's interactions multiply the filters by the cutoff themselves (no scale passed to the kernel)."""
    from atomnet.models import schnet

    schnet.filter_and_convolve = lambda net, conv, x, rbf, fcut, i, j: conv(x, net(rbf, fcut), i, j)


def patch_module_filter_network() -> None:
    """FilterNetwork.raw as its nn.Sequential, ssp as F.softplus(x) − ln 2 (no short route)."""
    from torch.nn import functional as F

    from atomnet.nn import activations, cfconv

    cfconv.FilterNetwork.raw = lambda self, rbf, layers=None: self.net(rbf)
    activations.ShiftedSoftplus.forward = lambda self, x: F.softplus(x).sub_(activations.LN2)
    patch_unfused_filter_network()


def patch_unfused_filter_network() -> None:
    """The filter network as torch ops (``FilterNetwork.raw``) before the cfconv kernel, also in energy training."""
    from atomnet.nn import fused_filter

    fused_filter.usable = lambda *args: False


def patch_ops_scale_grads() -> None:
    """The create_graph backward of the scaled conv as differentiable torch ops (W ∘ c, G ∘ c, Σ_f G ∘ W: atomnet
    before ``fused._OuterGrads``); affects force training only."""
    import torch

    from atomnet.nn import fused

    original = fused._scale_backward

    def scale_backward(ctx, grad, x, filters, scale, pair_i, pair_j):
        if not torch.is_grad_enabled():
            return original(ctx, grad, x, filters, scale, pair_i, pair_j)
        none = fused._NONE.to(filters.dtype)
        grad_x = fused._conv(grad, filters * scale[:, None], none, pair_j, pair_i)
        g_w = fused._outer(grad, x, none, pair_i, pair_j, filters.shape[0])
        return grad_x, g_w * scale[:, None], (g_w * filters).sum(1), None, None

    fused._scale_backward = scale_backward


def worker(variant: str, forces: bool, args) -> dict:
    import atomnet  # noqa: F401  (before torch, as the atomnet command does: its OpenMP wait setting)

    # isort: split
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if variant == "chunked-pairs":
        patch_chunked(args.chunk)
    if variant == "one-first-layer":
        patch_one_first_layer()
    if variant == "python-fused-cfconv":
        patch_fused_cfconv()
    if variant == "unfolded-cutoff":
        patch_unfolded_cutoff()
    if variant == "module-filter-network":
        patch_module_filter_network()
    if variant == "ops-scale-grads":
        patch_ops_scale_grads()
    if variant == "unfused-filter-network":
        patch_unfused_filter_network()
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_peers

    torch.manual_seed(0)
    adapter = bench_peers.AtomnetAdapter()
    potential = adapter.model.train()
    molecules = bench_peers.raw_molecules("c7h12o2" if forces else "qm9", 500)
    chunks = [molecules[k : k + 100] for k in range(0, 500, 100)]
    batches = [adapter.prepare(adapter.items(c)) for c in chunks]
    energies = [torch.tensor([m["energy"] for m in c], dtype=torch.float32) for c in chunks]
    reference_forces = [torch.from_numpy(np.concatenate([m["forces"] for m in c])) for c in chunks]
    optimizer = torch.optim.Adam(potential.parameters(), lr=1e-4, fused=variant == "fused-adam")
    model = potential.model
    energy = torch.compile(lambda b: model(b)["energy"], dynamic=True) if variant == "compiled" else None

    def step(k: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        mse = torch.nn.functional.mse_loss
        if forces:
            out = potential(batches[k], forces=True, create_graph=True)
            loss = mse(out["energy"], energies[k]) + mse(out["forces"], reference_forces[k])
        else:
            loss = mse(energy(batches[k]) if energy else adapter.energy(batches[k]), energies[k])
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    for _ in range(2):
        for k in range(len(batches)):
            step(k)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for k in range(len(batches)):
            step(k)
        times.append((time.perf_counter() - t0) / len(batches) * 1e3)
    peak = bench_peers.peak_rss_mib()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(len(batches)):
                step(k)
        table = prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=32
        )
        print(table, file=sys.stderr)
    return dict(ms_per_step=statistics.median(times), all_ms=times, warmup_s=warmup, peak_rss_mib=peak)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=2048, help="unordered pairs per block (chunked-pairs)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes beside each measurement")
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's top operators per variant"
    )
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1] == "forces", args)))
        return {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        results = measure(variants, args)
    finally:
        for proc in busy:
            proc.kill()
    report(results)
    if args.json:
        from atomnet.baselines.commands import write_json

        write_json(args.json, dict(threads=args.threads, chunk=args.chunk, busy=args.busy, results=results))
    return results


def measure(variants: list[str], args) -> dict:
    """``{variant: {task: result}}``, each (variant, task) measured in its own worker process."""
    results: dict[str, dict] = {}
    for variant in variants:
        if variant == "tcmalloc" and not TCMALLOC.exists():
            print(f"tcmalloc: skipped ({TCMALLOC} not installed)")
            continue
        drop = ("LD_PRELOAD", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ATOMNET_OMP_WAIT")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        if variant == "omp-passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        if variant == "omp-default":
            env["ATOMNET_OMP_WAIT"] = "default"
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        if variant == "glibc-default":
            env["ATOMNET_MALLOC"] = "default"
        if variant == "plain-cfconv":
            env["ATOMNET_FUSED"] = "0"
        if variant == "tcmalloc":
            env["LD_PRELOAD"] = str(TCMALLOC)
        for task in ("energy",) if variant == "compiled" else ("energy", "forces"):
            command = [sys.executable, __file__, "--worker", variant, task, "--threads", str(args.threads)]
            command += ["--repeats", str(args.repeats), "--chunk", str(args.chunk)]
            command += ["--profile"] if args.profile else []
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
                results.setdefault(variant, {})[task] = {"error": (tail or ["failed"])[0][:300]}
            else:
                results.setdefault(variant, {})[task] = json.loads(proc.stdout.strip().splitlines()[-1])
                if args.profile:
                    print(f"{variant} {task}: torch.profiler, one pass of 5 steps\n{proc.stderr}")
            r = results[variant][task]
            print(
                f"{variant:16s} {task:7s} "
                + (r["error"] if "error" in r else f"{r['ms_per_step']:.1f} ms/step")
            )
    return results


def report(results: dict) -> None:
    """The Markdown table of ms per step, each variant against ``baseline``."""
    base = results.get("baseline", {})
    print(
        "\n| variant | energy training (ms/step, QM9) | energy + forces (ms/step, C7H12O2) | peak RSS, forces (MiB) |"
        "\n|---|---:|---:|---:|"
    )
    for variant, tasks in results.items():
        cells = []
        for task in ("energy", "forces"):
            r = tasks.get(task, {})
            if "ms_per_step" not in r:
                cells.append(r.get("error", "—"))
                continue
            ref = base.get(task, {}).get("ms_per_step")
            cells.append(f"{r['ms_per_step']:.1f}" + (f" ({ref / r['ms_per_step']:.2f}×)" if ref else ""))
        peak = tasks.get("forces", {}).get("peak_rss_mib")
        print(f"| {variant} | {cells[0]} | {cells[1]} | {f'{peak:,.0f}' if peak else '—'} |")


if __name__ == "__main__":
    main()
