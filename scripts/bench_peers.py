"""Side by side: atomnet, schnetpack 2.1.1 and PyTorch Geometric 2.8.1 on the same SchNet — training, inference,
data loading and peak memory, in one run.

Model in all three packages: SchNet, 128 features, 128 filters, 3 interactions, 50 Gaussians, cosine cutoff 5 Å,
float32, the same parameter count (asserted: 238,465; atomnet's embedding is given ``max_z=99`` so it has PyG's
and schnetpack's 100 rows). Adam (lr 1e-4), batch 100, MSE loss on the energy (and on the forces, weight 1).

Cases (``--cases``; each (case, package) runs in a fresh process, so its peak RSS is its own):

- ``train_energy_qm9``: energy training on the first 1,000 molecules of the shared QM9 subset (10 batches).
- ``train_forces_ethanol`` / ``train_forces_c7h12o2``: energy + force training (double backward) on 1,000 MD17
  ethanol DFT frames (9 atoms) and on 1,000 perturbed copies of QM9 gdb 39683 (C7H12O2, 21 atoms).
- ``infer_forces_ethanol`` / ``infer_forces_c7h12o2``: energy + forces, evaluation mode, same batches.
- ``load_qm9``: one epoch over 2,000 QM9 molecules from each package's own store, batches of 100 with neighbour
  pairs at 5 Å: atomnet's HDF5 store (``StoreDataset``), schnetpack's ASE database (``ASEAtomsData`` with
  ``MatScipyNeighborList``, the faster of its two neighbour lists, and ``CastTo32``), PyG's ``InMemoryDataset``
  + ``DataLoader`` plus the pure-torch radius graph below per batch.

Rows: **model** — batches prebuilt (neighbour pairs included; PyG gets its pairs through ``interaction_graph=``,
so it computes only the distances, as the others do); **end to end** — batch building inside the timed loop:
atomnet ``make_batch`` on the concatenated arrays, schnetpack its neighbour-list transform per molecule and
``_atoms_collate_fn``, PyG ``Batch.from_data_list`` and its radius graph. Each figure is the median of
``--repeats`` passes over all batches after ``--warmup`` passes; molecules per second.

Same settings for every package: ``--threads`` torch threads (OMP/MKL variables too), flush-denormal on,
tcmalloc preloaded when ``libtcmalloc_minimal.so.4`` is installed (``--no-tcmalloc`` turns it off).

Workarounds for the peers, all in this file: PyG's default radius graph needs ``pyg-lib``/``torch-cluster``,
which the registry lacks for torch 2.13, so ``interaction_graph=`` gets the pure-torch ``radius_pairs`` below;
schnetpack 2.1.1 is installed with ``--no-deps`` and imported with the ``T_co`` shim of ``bench_md.py``.

The atomnet energy-training worker also counts the FLOPs of one training step (matrix products, with
``torch.utils.flop_counter``) and measures this CPU's float32 matrix-product rate at the model's shapes; the
report gives the throughput ceiling this implies and atomnet's fraction of it.

    bash scripts/setup_bench_env.sh
    .venv-bench/bin/python scripts/bench_peers.py --threads 2 --repeats 5     # docs/performance/peers.{json,md,png}
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from atomnet.baselines.commands import write_json
from atomnet.files import atomic_output, save_figure

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
QM9 = SHARED / "qm9" / "qm9_subset.tar.bz2"
ETHANOL = SHARED / "md17" / "ethanol_dft_1200.xyz"
OUT = ROOT / "docs" / "performance"
PACKAGES = ("atomnet", "atomnet_tabulated", "atomnet_compiled", "pyg", "schnetpack")
#: atomnet with tabulated filters (cubic Hermite tables of the filter networks) and with the model compiled as the
#: ASE calculator compiles it (``torch.compile(dynamic=True)`` of a frozen copy; compilation in the untimed
#: warm-up): inference cases only
INFER_ONLY = {"atomnet_tabulated", "atomnet_compiled"}
#: the atomnet columns, with the prefix of their keys in the ratios
VARIANTS = {"atomnet": "", "atomnet_tabulated": "tabulated_", "atomnet_compiled": "compiled_"}
HP = dict(n_atom_basis=128, n_filters=128, n_interactions=3, n_rbf=50, cutoff=5.0)
CASES = {
    "train_energy_qm9": ("train", False, "qm9"),
    "train_forces_ethanol": ("train", True, "ethanol"),
    "train_forces_c7h12o2": ("train", True, "c7h12o2"),
    "infer_forces_ethanol": ("infer", True, "ethanol"),
    "infer_forces_c7h12o2": ("infer", True, "c7h12o2"),
    "load_qm9": ("load", False, "qm9"),
}
TCMALLOC = "libtcmalloc_minimal.so.4"


# ----------------------------------------------------------------------------------------------- data
def raw_molecules(system: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` molecules as dicts of numpy arrays: numbers (N,), positions (N, 3) Å float32, energy (eV, centred),
    forces (N, 3) eV/Å float32 (random for the QM9 and C7H12O2 systems: speed does not depend on them)."""
    rng = np.random.default_rng(seed)
    if system == "qm9":
        from atomnet.data.qm9 import read_qm9_tarball

        table = read_qm9_tarball(QM9, limit=n, progress=False)
        off, energy = table.offsets, np.asarray(table.properties["U0"], np.float64)
        energy = energy - energy.mean()
        return [
            dict(
                numbers=table.numbers[off[k] : off[k + 1]].astype(np.int64),
                positions=np.asarray(table.positions[off[k] : off[k + 1]], np.float32),
                energy=energy[k],
                forces=rng.normal(size=(off[k + 1] - off[k], 3)).astype(np.float32),
            )
            for k in range(n)
        ]
    if system == "ethanol":
        import ase.io

        frames = ase.io.read(ETHANOL, f":{n}")
        energies = np.array([a.get_potential_energy() for a in frames])
        return [
            dict(
                numbers=a.numbers.astype(np.int64),
                positions=a.positions.astype(np.float32),
                energy=e - energies.mean(),
                forces=a.get_forces().astype(np.float32),
            )
            for a, e in zip(frames, energies, strict=True)
        ]
    if system == "c7h12o2":
        atoms = bench_md().small_molecule()
        return [
            dict(
                numbers=atoms.numbers.astype(np.int64),
                positions=(atoms.positions + rng.normal(scale=0.03, size=atoms.positions.shape)).astype(
                    np.float32
                ),
                energy=rng.normal(),
                forces=rng.normal(size=(len(atoms), 3)).astype(np.float32),
            )
            for _ in range(n)
        ]
    raise ValueError(f"unknown system {system!r}")


def bench_md():
    """``scripts/bench_md.py`` (the 21-atom molecule and the schnetpack import shims live there)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_md

    return bench_md


def radius_pairs(pos, batch, n_atoms, cutoff: float):
    """Directed pairs (i, j), i != j, of the same molecule closer than ``cutoff``: all pairs inside each molecule,
    then a distance mask (what ``torch_cluster.radius_graph`` returns, in pure torch). pos (N, 3), batch (N,),
    n_atoms (n_molecules,); returns two (n_pairs,) int64 tensors."""
    import torch

    size = n_atoms[batch]  # atoms in the molecule of each atom
    first = torch.cumsum(n_atoms, 0) - n_atoms
    i = torch.repeat_interleave(torch.arange(pos.shape[0]), size)
    start = torch.cumsum(size, 0) - size
    j = first[batch][i] + torch.arange(i.numel()) - torch.repeat_interleave(start, size)
    keep = (i != j) & ((pos[i] - pos[j]).norm(dim=-1) < cutoff)
    return i[keep], j[keep]


# ----------------------------------------------------------------------------------------------- adapters
class AtomnetAdapter:
    """atomnet: ``SchNet`` inside ``Potential`` (forces by autograd), batches from ``make_batch``; ``tabulate``:
    the filter networks replaced by tables (:func:`atomnet.models.tabulate_filters`); ``compile``: the model
    compiled as ``AtomNetCalculator(compile=True)`` compiles it (both for inference only)."""

    def __init__(self, tabulate: bool = False, compile: bool = False):
        from atomnet.models import SchNet, tabulate_filters
        from atomnet.potential import Potential

        model = SchNet(**HP, max_z=99)
        model = tabulate_filters(model) if tabulate else model
        if (
            compile
        ):  # the calculator's recipe: a frozen copy (no weight gradients), one-thread element-wise kernels
            from atomnet.calculator import _compiled

            model = _compiled(model)
        self.model = Potential(model)

    def items(self, molecules: list[dict]):
        return dict(
            numbers=np.concatenate([m["numbers"] for m in molecules]),
            positions=np.concatenate([m["positions"] for m in molecules]),
            n_atoms=np.array([len(m["numbers"]) for m in molecules]),
        )

    def prepare(self, items):
        import torch

        from atomnet.data.batch import make_batch

        return make_batch(
            torch.from_numpy(items["numbers"]),
            torch.from_numpy(items["positions"]),
            torch.from_numpy(items["n_atoms"]),
            cutoff=HP["cutoff"],
        )

    def energy(self, batch):
        return self.model(batch, forces=False)["energy"]

    def energy_forces(self, batch, create_graph: bool):
        out = self.model(batch, forces=True, create_graph=create_graph)
        return out["energy"], out["forces"]


class PygAdapter:
    """PyG: ``torch_geometric.nn.models.SchNet`` with a pure-torch ``interaction_graph`` (no pyg-lib here)."""

    def __init__(self):
        import torch
        from torch_geometric.nn.models import SchNet

        adapter = self

        class Graph(torch.nn.Module):
            """Pairs prebuilt for the model row (``adapter.pairs``), else found by :func:`radius_pairs`."""

            def forward(self, pos, batch):
                if adapter.pairs is not None:
                    i, j = adapter.pairs
                else:
                    i, j = radius_pairs(pos.detach(), batch, adapter.n_atoms, HP["cutoff"])
                return torch.stack([j, i]), (pos[i] - pos[j]).norm(dim=-1)

        self.pairs, self.n_atoms = None, None
        self.model = SchNet(
            hidden_channels=HP["n_atom_basis"],
            num_filters=HP["n_filters"],
            num_interactions=HP["n_interactions"],
            num_gaussians=HP["n_rbf"],
            cutoff=HP["cutoff"],
            interaction_graph=Graph(),
        )

    def items(self, molecules: list[dict]):
        import torch
        from torch_geometric.data import Data

        return [
            Data(z=torch.from_numpy(m["numbers"]), pos=torch.from_numpy(m["positions"])) for m in molecules
        ]

    def prepare(self, items, prebuilt: bool = False):
        import torch
        from torch_geometric.data import Batch

        data = Batch.from_data_list(items)
        n_atoms = torch.bincount(data.batch)
        pairs = radius_pairs(data.pos, data.batch, n_atoms, HP["cutoff"]) if prebuilt else None
        return data.z, data.pos, data.batch, n_atoms, pairs

    def _energy(self, inputs, pos):
        z, _, batch, n_atoms, pairs = inputs
        self.pairs, self.n_atoms = pairs, n_atoms
        return self.model(z, pos, batch).view(-1)

    def energy(self, inputs):
        return self._energy(inputs, inputs[1])

    def energy_forces(self, inputs, create_graph: bool):
        import torch

        pos = inputs[1].detach().requires_grad_(True)
        energy = self._energy(inputs, pos)
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        return energy, -grad


class SchnetpackAdapter:
    """schnetpack 2.1.1: ``NeuralNetworkPotential`` (``PairwiseDistances``, ``SchNet``, ``Atomwise``, ``Forces``),
    per-molecule ``MatScipyNeighborList`` and ``_atoms_collate_fn``."""

    def __init__(self, forces: bool):
        spk = bench_md().import_schnetpack()
        import schnetpack.transform as trn
        from schnetpack.data.loader import _atoms_collate_fn

        self.spk, self.collate = spk, _atoms_collate_fn
        self.neighbors = trn.MatScipyNeighborList(cutoff=HP["cutoff"])
        outputs = [spk.atomistic.Atomwise(n_in=HP["n_atom_basis"], output_key="energy")]
        if forces:
            outputs.append(spk.atomistic.Forces(energy_key="energy", force_key="forces"))
        self.model = spk.model.NeuralNetworkPotential(
            representation=spk.representation.SchNet(
                n_atom_basis=HP["n_atom_basis"],
                n_filters=HP["n_filters"],
                n_interactions=HP["n_interactions"],
                radial_basis=spk.nn.GaussianRBF(n_rbf=HP["n_rbf"], cutoff=HP["cutoff"]),
                cutoff_fn=spk.nn.CosineCutoff(HP["cutoff"]),
            ),
            input_modules=[spk.atomistic.PairwiseDistances()],
            output_modules=outputs,
        )

    def items(self, molecules: list[dict]):
        import torch

        p = self.spk.properties
        return [
            {
                p.idx: torch.tensor([k]),
                p.Z: torch.from_numpy(m["numbers"]),
                p.R: torch.from_numpy(m["positions"]),
                p.cell: torch.zeros(1, 3, 3),
                p.pbc: torch.zeros(1, 3, dtype=torch.bool),
                p.n_atoms: torch.tensor([len(m["numbers"])]),
            }
            for k, m in enumerate(molecules)
        ]

    def prepare(self, items):
        return self.collate([self.neighbors(dict(item)) for item in items])

    def energy(self, inputs):
        return self.model(inputs)["energy"]

    def energy_forces(self, inputs, create_graph: bool):
        out = self.model(inputs)  # Forces keeps the graph when the model is in training mode
        return out["energy"], out["forces"]


def make_adapter(package: str, forces: bool):
    if package in VARIANTS:
        return AtomnetAdapter(tabulate=package == "atomnet_tabulated", compile=package == "atomnet_compiled")
    if package == "pyg":
        return PygAdapter()
    if package == "schnetpack":
        return SchnetpackAdapter(forces)
    raise ValueError(f"unknown package {package!r}")


# ----------------------------------------------------------------------------------------------- worker
def rss_mib() -> float:
    """Current resident set size (MiB) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_passes(step, batches, warmup: int, repeats: int) -> list[float]:
    """Seconds per pass of ``step`` over every batch, ``repeats`` passes after ``warmup`` untimed ones."""
    for _ in range(warmup):
        for b in batches:
            step(b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        times.append(time.perf_counter() - t0)
    return times


def model_worker(case: str, package: str, args) -> dict:
    import torch

    kind, forces, system = CASES[case]
    torch.manual_seed(0)
    adapter = make_adapter(package, forces)
    model = adapter.model.train(kind == "train")
    n_params = sum(p.numel() for p in model.parameters()) if package not in INFER_ONLY else None
    molecules = raw_molecules(system, args.batches * args.batch_size)
    chunks = [molecules[k : k + args.batch_size] for k in range(0, len(molecules), args.batch_size)]
    items = [adapter.items(c) for c in chunks]
    targets = [
        (
            torch.tensor([m["energy"] for m in c], dtype=torch.float32),
            torch.from_numpy(np.concatenate([m["forces"] for m in c])),
        )
        for c in chunks
    ]
    prebuilt = [
        adapter.prepare(it, prebuilt=True) if package == "pyg" else adapter.prepare(it) for it in items
    ]
    # only training needs an optimizer; creating one imports ~70 MiB of torch modules into every package's process
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4) if kind == "train" else None

    def run(inputs, target):
        if kind == "infer":
            energy, f = adapter.energy_forces(inputs, create_graph=False)
            return float(energy.sum()) + float(f.sum())
        optimizer.zero_grad(set_to_none=True)
        if forces:
            energy, f = adapter.energy_forces(inputs, create_graph=True)
            loss = torch.nn.functional.mse_loss(energy, target[0]) + torch.nn.functional.mse_loss(
                f, target[1]
            )
        else:
            loss = torch.nn.functional.mse_loss(adapter.energy(inputs), target[0])
        loss.backward()
        optimizer.step()
        return float(loss)

    rss_before = rss_mib()
    n_mol = len(molecules)
    model_times = timed_passes(
        lambda k: run(prebuilt[k], targets[k]), range(len(items)), args.warmup, args.repeats
    )
    e2e_times = timed_passes(
        lambda k: run(adapter.prepare(items[k]), targets[k]), range(len(items)), 1, args.repeats
    )
    result = dict(
        n_params=n_params,
        n_molecules=n_mol,
        batch_size=args.batch_size,
        n_atoms=int(sum(len(m["numbers"]) for m in molecules)),
        model_seconds=model_times,
        end_to_end_seconds=e2e_times,
        model_mol_per_s=n_mol / statistics.median(model_times),
        end_to_end_mol_per_s=n_mol / statistics.median(e2e_times),
        rss_before_mib=rss_before,
        peak_rss_mib=peak_rss_mib(),
    )
    if package == "atomnet" and case == "train_energy_qm9":
        result.update(flop_ceiling(lambda: run(prebuilt[0], targets[0]), prebuilt[0], n_params))
    return result


def flop_ceiling(step, batch, n_params: int) -> dict:
    """Matrix-product FLOPs of one training step (forward + backward + Adam) and the measured float32 GEMM rate
    of this CPU at the model's two shapes: (n_atoms × 128) @ (128 × 128) and (n_pairs × 50) @ (50 × 128)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    rates = []
    for rows, inner in ((batch.numbers.numel(), 128), (batch.pair_i.numel() // 2, HP["n_rbf"])):
        a, b = torch.randn(rows, inner), torch.randn(inner, 128)
        for _ in range(3):
            a @ b
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            a @ b
            n += 1
        rates.append(2 * rows * inner * 128 * n / (time.perf_counter() - t0))
    return dict(
        step_matmul_flops=flops,
        gemm_flops_per_s=rates,
        batch_atoms=batch.numbers.numel(),
        batch_pairs=batch.pair_i.numel(),
    )


def load_worker(package: str, args) -> dict:
    """One epoch over ``args.load_molecules`` QM9 molecules from the package's own store (written untimed)."""
    import torch

    molecules = raw_molecules("qm9", args.load_molecules)
    tmp = tempfile.TemporaryDirectory()
    if package == "atomnet":
        from atomnet.data.dataset import StoreDataset, make_loader
        from atomnet.data.qm9 import read_qm9_tarball
        from atomnet.data.store import write_store

        path = Path(tmp.name) / "qm9.h5"
        write_store(read_qm9_tarball(QM9, limit=args.load_molecules, progress=False), path, progress=False)
        dataset = StoreDataset(path, cutoff=HP["cutoff"], targets=["U0"], energy_key="U0")
        loader = make_loader(dataset, args.batch_size)

        def epoch():
            return sum(b.pair_i.numel() for b in loader)

    elif package == "schnetpack":
        from ase import Atoms

        spk = bench_md().import_schnetpack()
        import schnetpack.transform as trn

        path = str(Path(tmp.name) / "qm9.db")
        data = spk.data.ASEAtomsData.create(path, distance_unit="Ang", property_unit_dict={"energy_U0": "eV"})
        data.add_systems(
            [{"energy_U0": np.array([m["energy"]])} for m in molecules],
            [Atoms(numbers=m["numbers"], positions=m["positions"]) for m in molecules],
        )
        dataset = spk.data.ASEAtomsData(
            path, transforms=[trn.MatScipyNeighborList(cutoff=HP["cutoff"]), trn.CastTo32()]
        )
        loader = spk.data.AtomsLoader(dataset, batch_size=args.batch_size)

        def epoch():
            return sum(b[spk.properties.idx_i].numel() for b in loader)

    elif package == "pyg":
        from torch_geometric.data import Data, InMemoryDataset
        from torch_geometric.loader import DataLoader

        class QM9Subset(InMemoryDataset):
            def __init__(self, root: str):
                super().__init__(root)
                self.load(self.processed_paths[0])

            @property
            def processed_file_names(self):
                return ["qm9.pt"]

            def process(self):
                self.save(
                    [
                        Data(
                            z=torch.from_numpy(m["numbers"]),
                            pos=torch.from_numpy(m["positions"]),
                            y=torch.tensor([m["energy"]], dtype=torch.float32),
                        )
                        for m in molecules
                    ],
                    self.processed_paths[0],
                )

        QM9Subset(tmp.name)  # processes and saves
        loader = DataLoader(QM9Subset(tmp.name), batch_size=args.batch_size)

        def epoch():
            total = 0
            for b in loader:
                total += radius_pairs(b.pos, b.batch, torch.bincount(b.batch), HP["cutoff"])[0].numel()
            return total

    else:
        raise ValueError(package)
    rss_before = rss_mib()
    n_pairs = epoch()
    times = timed_passes(lambda _: epoch(), [None], 1, args.repeats)
    tmp.cleanup()
    return dict(
        n_molecules=args.load_molecules,
        n_pairs=n_pairs,
        end_to_end_seconds=times,
        end_to_end_mol_per_s=args.load_molecules / statistics.median(times),
        rss_before_mib=rss_before,
        peak_rss_mib=peak_rss_mib(),
    )


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    case, package = args.worker
    result = load_worker(package, args) if CASES[case][0] == "load" else model_worker(case, package, args)
    result["torch_threads"] = torch.get_num_threads()
    result["tcmalloc"] = TCMALLOC in os.environ.get("LD_PRELOAD", "")
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------- parent
def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("atomnet", "torch", "schnetpack", "torch_geometric", "ase", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def worker_env(args) -> dict:
    """The environment of every measured process: threads, and tcmalloc preloaded unless ``--no-tcmalloc``."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env.pop("LD_PRELOAD", None)
    lib = ctypes.util.find_library("tcmalloc_minimal")
    folders = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")
    path = next((p for p in folders if Path(p, TCMALLOC).exists()), None)
    if not args.no_tcmalloc and lib and path:
        env["LD_PRELOAD"] = str(Path(path, TCMALLOC))
    return env


def run_worker(case: str, package: str, args) -> dict:
    env = worker_env(args)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    command = [
        sys.executable, __file__, "--worker", case, package, "--result", result_path,
        "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--batches", str(args.batches), "--batch-size", str(args.batch_size),
        "--load-molecules", str(args.load_molecules),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    try:
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return dict(error=(lines or [f"exit {proc.returncode}"])[-1][:300])
        result = json.loads(Path(result_path).read_text())
    finally:
        Path(result_path).unlink(missing_ok=True)
    result["process_seconds"] = time.perf_counter() - t0
    return result


def side_report(command: list[str], args) -> dict:
    """Run another benchmark script of this folder with ``--json`` (same threads and allocator) and return its
    JSON, or ``{"error": ...}``."""
    env = worker_env(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "out.json")
        script = str(ROOT / "scripts" / command[0])
        proc = subprocess.run([sys.executable, script, *command[1:], "--json", path], env=env, text=True,
                              capture_output=True)  # fmt: skip
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return dict(error=(lines or [f"exit {proc.returncode}"])[-1][:300])
        return json.loads(Path(path).read_text())


def peak_rss(result: dict) -> float | None:
    """Peak RSS of a worker process (MiB): interpreter, imports, data and the work together."""
    return result.get("peak_rss_mib")


def added_rss(result: dict) -> float | None:
    """What the timed work adds to the process (MiB): peak RSS minus the RSS just before the first timed step
    (imports, molecules, prebuilt batches and the optimizer already in place), i.e. the memory the model's
    forward and backward passes need."""
    if "peak_rss_mib" not in result or "rss_before_mib" not in result:
        return None
    return result["peak_rss_mib"] - result["rss_before_mib"]


#: the memory rows of the report: ratio key -> (value of a worker's result in MiB, table label, figure label)
MEMORY_ROWS = {
    "peak_rss": (peak_rss, "peak RSS (MiB)", "peak RSS"),
    "added_rss": (added_rss, "RSS added by the work (MiB)", "RSS added"),
}


def ratios(results: dict) -> dict:
    """For each case and row: atomnet / best peer throughput, and atomnet / smallest peer peak RSS and added RSS
    (:func:`added_rss`); for the inference cases also atomnet with tabulated filters / best peer (keys prefixed
    ``tabulated_``) and compiled (``compiled_``)."""
    out = {}
    for case, by_package in results.items():
        peers = {p: r for p, r in by_package.items() if not p.startswith("atomnet") and "error" not in r}
        entry = {}
        for variant, prefix in VARIANTS.items():
            mine = by_package.get(variant, {})
            for row in ("model_mol_per_s", "end_to_end_mol_per_s"):
                speeds = {p: r[row] for p, r in peers.items() if row in r}
                if row in mine and speeds:
                    best = max(speeds, key=speeds.get)
                    entry[prefix + row] = dict(ratio=mine[row] / speeds[best], best_peer=best)
            for row, (memory, _, _) in MEMORY_ROWS.items():
                rss = {p: memory(r) for p, r in peers.items() if memory(r) is not None}
                if memory(mine) is not None and rss:
                    low = min(rss, key=rss.get)
                    entry[prefix + row] = dict(ratio=memory(mine) / rss[low], best_peer=low)
        out[case] = entry
    return out


def ceiling(results: dict) -> dict | None:
    r = results.get("train_energy_qm9", {}).get("atomnet", {})
    if "step_matmul_flops" not in r:
        return None
    rate = min(r["gemm_flops_per_s"])  # the slower of the two shapes bounds a step that needs both
    steps_per_s = r["model_mol_per_s"] / r["batch_size"]
    achieved = r["step_matmul_flops"] * steps_per_s
    ceiling_mol_s = rate / r["step_matmul_flops"] * r["batch_size"]
    return dict(
        step_matmul_gflop=r["step_matmul_flops"] / 1e9,
        gemm_gflop_per_s=[x / 1e9 for x in r["gemm_flops_per_s"]],
        ceiling_mol_per_s=ceiling_mol_s,
        achieved_gflop_per_s=achieved / 1e9,
        fraction=achieved / rate,
    )


ROW_NAMES = {"model_mol_per_s": "model", "end_to_end_mol_per_s": "end to end"}


def _ratio_cells(entry: dict, row: str) -> str:
    """The ratio cells (atomnet, tabulated, compiled) of one table row."""
    cells = []
    for key in (prefix + row for prefix in VARIANTS.values()):
        ratio = entry.get(key)
        cells.append(f"{ratio['ratio']:.2f}× ({ratio['best_peer']})" if ratio else "—")
    return " | ".join(cells)


def markdown(report: dict) -> str:
    lines = [
        f"# Side-by-side benchmark: atomnet vs schnetpack vs PyG ({report['date']})",
        "",
        f"CPU: {report['cpu']}; {report['threads']} torch threads; tcmalloc: {report['tcmalloc']}; "
        f"median of {report['repeats']} passes after warm-up. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        f"Command: `{report['command']}`"
        + (f" (this report rewritten by `{report['rendered']}`)" if "rendered" in report else ""),
        "",
        "| case | row | atomnet | atomnet tabulated | atomnet compiled | PyG | schnetpack | atomnet / best peer "
        "| tabulated / best peer | compiled / best peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, by_package in report["results"].items():
        rows = ["end_to_end_mol_per_s"] if CASES[case][0] == "load" else list(ROW_NAMES)
        for row in rows:
            cells = []
            for p in PACKAGES:
                r = by_package.get(p, {})
                cells.append(f"{r[row]:,.0f}" if row in r else ("error" if "error" in r else "—"))
            lines.append(
                f"| {case} | {ROW_NAMES[row]} (molecules/s) | {' | '.join(cells)} | "
                + _ratio_cells(report["ratios"][case], row)
                + " |"
            )
        for row, (memory, name, _) in MEMORY_ROWS.items():
            values = [memory(by_package.get(p, {})) for p in PACKAGES]
            cells = ["—" if v is None else f"{v:,.0f}" for v in values]
            lines.append(
                f"| {case} | {name} | {' | '.join(cells)} | "
                + _ratio_cells(report["ratios"][case], row)
                + " |"
            )
    load = report["results"].get("load_qm9", {})
    if "end_to_end_mol_per_s" in load.get("atomnet", {}) and "end_to_end_mol_per_s" in load.get(
        "schnetpack", {}
    ):
        ratio = load["atomnet"]["end_to_end_mol_per_s"] / load["schnetpack"]["end_to_end_mol_per_s"]
        lines.append(f"\nload_qm9, atomnet / schnetpack: {ratio:,.0f}×")
    errors = [
        (c, p, r["error"]) for c, bp in report["results"].items() for p, r in bp.items() if "error" in r
    ]
    for case, package, error in errors:
        lines.append(f"\n{case} / {package} failed: `{error}`")
    md = report.get("md")
    if md and "steps_per_s" in md:
        lines += [
            "",
            "MD steps per second through ASE (case 4, `scripts/bench_md.py`; PyG has no ASE calculator):",
            "",
        ]
        names = list(next(iter(md["steps_per_s"].values())))
        lines += ["| system | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for system, rates in md["steps_per_s"].items():
            lines.append(f"| {system} | " + " | ".join(f"{rates[n]:.1f}" for n in names) + " |")
    elif md:
        lines.append(f"\nMD benchmark failed: `{md['error']}`")
    krr = report.get("krr")
    if krr and "folds" in krr:
        fold = krr["folds"][0]
        lines += ["", f"KRR on QM7 fold 0 ({fold['n_train']} training, {fold['n_test']} test molecules, "
                  "`scripts/bench_krr_qmllib.py`):", "", "| | atomnet | qmllib |", "|---|---:|---:|"]  # fmt: skip
        for key, name in (
            ("fit_seconds", "fit (s)"),
            ("predict_seconds", "predict (s)"),
            ("mae", "MAE (kcal/mol)"),
        ):
            lines.append(f"| {name} | {fold['atomnet'][key]:.3f} | {fold['qmllib'][key]:.3f} |")
    elif krr:
        lines.append(f"\nKRR benchmark failed: `{krr['error']}`")
    explain = report.get("explain")
    if explain and "rows" in explain:
        lines += ["", "Explanations (atomnet only: neither peer ships relevance methods for its SchNet; "
                  "`scripts/bench_explain.py`, the shipped models):", "",
                  "| case | method | ms / molecule | × forward + backward |", "|---|---|---:|---:|"]  # fmt: skip
        for r in explain["rows"]:
            lines.append(f"| {r['case']} | {r['method']} | {r['ms_per_molecule']:.3f} | {r['ratio']:.2f} |")
    elif explain:
        lines.append(f"\nExplanation benchmark failed: `{explain['error']}`")
    c = report.get("ceiling")
    if c:
        lines += [
            "",
            f"Throughput ceiling for train_energy_qm9 from matrix-product FLOPs: {c['step_matmul_gflop']:.2f} GFLOP "
            f"per step of 100 molecules; this CPU's float32 GEMM rate at the model's shapes "
            f"{' and '.join(f'{x:.1f}' for x in c['gemm_gflop_per_s'])} GFLOP/s, so at most "
            f"{c['ceiling_mol_per_s']:,.0f} molecules/s; atomnet reaches {c['achieved_gflop_per_s']:.1f} GFLOP/s, "
            f"**{100 * c['fraction']:.0f} %** of the ceiling.",
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    for case, entry in report["ratios"].items():
        rows = (*ROW_NAMES.items(), *((row, label) for row, (_, _, label) in MEMORY_ROWS.items()))
        variants = [(f"{prefix}{r}", f"{n}{', ' + prefix.strip('_') if prefix else ''}") for r, n in rows
                    for prefix in VARIANTS.values()]  # fmt: skip
        for row, name in variants:
            if row in entry:
                labels.append(f"{case}\n{name} vs {entry[row]['best_peer']}")
                values.append(entry[row]["ratio"])
                colors.append("tab:gray" if row.endswith("_rss") else "tab:blue")
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, values, color=colors)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(2.0, color="tab:green", lw=0.8, ls="--", label="speed target 2×")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("atomnet / best peer (speed: higher is better; memory: lower is better)")
    ax.set_title(f"atomnet vs schnetpack / PyG, {report['threads']} threads, {report['date']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--packages", default=",".join(PACKAGES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes before the model row")
    parser.add_argument("--batches", type=int, default=10, help="batches per pass")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--load-molecules", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per (case, package) process")
    parser.add_argument("--no-tcmalloc", action="store_true")
    parser.add_argument(
        "--md", action="store_true", help="also case 4: MD steps/s through ASE (scripts/bench_md.py)"
    )
    parser.add_argument(
        "--krr", action="store_true", help="also KRR fit/predict vs qmllib (bench_krr_qmllib.py)"
    )
    parser.add_argument("--out", default=str(OUT), help="folder for peers.json, peers.md, peers.png")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also every explanation method's cost (scripts/bench_explain.py)",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: recompute the ratios of an earlier run's peers.json and write peers.{json,md,png}"
        " to --out (after a change to the report's format)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "PACKAGE"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.render:
        return render(args.render, Path(args.out))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    unknown = sorted(set(cases) - set(CASES)) + sorted(set(packages) - set(PACKAGES))
    if unknown:
        parser.error(f"unknown case or package: {', '.join(unknown)}")

    from tqdm.auto import tqdm

    results: dict[str, dict] = {}
    jobs = [(c, p) for c in cases for p in packages if p not in INFER_ONLY or CASES[c][0] == "infer"]
    for case, package in tqdm(jobs, desc="bench_peers", unit="run"):
        results.setdefault(case, {})[package] = r = run_worker(case, package, args)
        tqdm.write(f"{case:24s} {package:11s} " + (
            f"error: {r['error']}" if "error" in r else
            " ".join(f"{ROW_NAMES[k]} {r[k]:,.0f} mol/s" for k in ROW_NAMES if k in r)
            + f"  peak {r['peak_rss_mib']:,.0f} MiB"
        ))  # fmt: skip
    for case, by_package in results.items():
        counts = {p: r["n_params"] for p, r in by_package.items() if r.get("n_params") is not None}
        if len(set(counts.values())) > 1:
            raise SystemExit(f"bench_peers: parameter counts differ in {case}: {counts}")
    extra = {}
    if args.md:
        extra["md"] = side_report(["bench_md.py", "--threads", str(args.threads), "--repeats", "3"], args)
    if args.krr:
        extra["krr"] = side_report(["bench_krr_qmllib.py", "--folds-run", "1"], args)
    if args.explain:
        extra["explain"] = side_report(["bench_explain.py", "--threads", str(args.threads)], args)
    report = dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        cpu=cpu_name(),
        threads=args.threads,
        repeats=args.repeats,
        tcmalloc=TCMALLOC in worker_env(args).get("LD_PRELOAD", ""),
        versions=versions(),
        hyperparameters=HP,
        command="python scripts/bench_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        results=results,
        ratios=ratios(results),
        ceiling=ceiling(results),
        **extra,
    )
    text = markdown(report)
    write_report(report, text, Path(args.out))
    print(text)
    return report


def render(source: str, out: Path) -> dict:
    """Rewrite an earlier run's report (``source``, a peers.json) with this script's ratios and format."""
    try:
        report = json.loads(Path(source).read_text())
        report["ratios"] = ratios(report["results"])
        report["rendered"] = f"python scripts/bench_peers.py --render {source} --out {out}"
        text = markdown(report)  # before anything is written: a broken report leaves no partial output
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SystemExit(f"bench_peers: {source}: not a peers.json report ({err!r})") from None
    write_report(report, text, out)
    print(text)
    return report


def write_report(report: dict, text: str, out: Path) -> None:
    """peers.json, peers.md (``text``, :func:`markdown` of ``report``) and, when there are ratios, peers.png in
    ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "peers.json", report)
    with atomic_output(out / "peers.md") as tmp:
        tmp.write_text(text)
    if any(report["ratios"].values()):
        plot(report, out / "peers.png")


if __name__ == "__main__":
    main()
