"""Exported model files: a trained potential as a ``torch.export`` + AOTInductor package (``.pt2``) that any
process with torch (Python or C++) can run without atomnet.

Signature of the packaged function (engine-neutral; see ``docs/export.md``)::

    energy, forces, atomic_energies = f(numbers, positions, pair_i, pair_j, shifts)

    numbers          (n,)    int64   atomic numbers
    positions        (n, 3)  float   Å
    pair_i, pair_j   (p,)    int64   a FULL neighbour list (both directions i→j and j→i) containing every pair
                                     closer than the model cutoff (more pairs are allowed: the cutoff
                                     function gives them exactly zero weight)
    shifts           (p, 3)  float   Å, periodic image offset of each pair: r_ij = R_j − R_i + shifts
                                     (zero for molecules; ASE: ``S @ cell`` from ``neighbor_list("ijS")``)
    energy           ()      float   eV
    forces           (n, 3)  float   eV/Å, −∂E/∂R (exact, from the packaged backward pass)
    atomic_energies  (n,)    float   eV, sum = energy

``n`` and ``p`` are dynamic (n ≥ 2, p ≥ 2; for a single atom or no pairs pass two far-apart dummy atoms
of the same element, or use the ASE calculator); ``float`` is float32 or float64 as chosen at export.

How: the energy and its gradient are traced together into one ATen graph (``make_fx`` of the function
that calls ``torch.autograd.grad``; ``torch.export`` cannot trace autograd calls itself), exported with
symbolic ``n`` and ``p``, and compiled ahead of time by AOTInductor. Metadata (cutoff, elements, units,
dtype, atomnet and torch versions, the signature) travel inside the package as string pairs:
``atomnet export --info FILE`` prints them, C++ reads them with ``AOTIModelPackageLoader::get_metadata``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn

from atomnet import keys, units
from atomnet.data.batch import AtomsBatch
from atomnet.errors import AtomNetError
from atomnet.models.base import AtomisticModel

#: bumped when the signature or the metadata keys change
EXPORT_FORMAT = "atomnet-export-1"
SIGNATURE = (
    "energy (), forces (n, 3), atomic_energies (n,) = f(numbers (n,) int64, positions (n, 3) A, "
    "pair_i (p,) int64, pair_j (p,) int64, shifts (p, 3) A); full neighbour list within the cutoff; eV, eV/A"
)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ExportedPotential(nn.Module):
    """Energy, forces and per-atom energies of one structure from an external pair list, in eV and eV/Å.

    The function that is exported (see the module docstring for shapes). ``energy_factor`` converts the
    model's energy unit to eV. The pair list needs no mirrored layout: filters are evaluated per directed
    pair.
    """

    def __init__(self, model: AtomisticModel, energy_factor: float = 1.0):
        super().__init__()
        self.model = model
        self.energy_factor = float(energy_factor)

    def forward(
        self,
        numbers: torch.Tensor,
        positions: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
        shifts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = positions.detach().requires_grad_(True)
        n = numbers.shape[0]
        # an identity cell makes the lattice shifts of AtomsBatch Cartesian offsets in Å
        batch = AtomsBatch(
            numbers=numbers,
            positions=positions,
            molecule=torch.zeros_like(numbers),
            n_atoms=torch.full((1,), n, dtype=numbers.dtype, device=numbers.device),
            pair_i=pair_i,
            pair_j=pair_j,
            cell=torch.eye(3, dtype=positions.dtype, device=positions.device)[None],
            cell_shifts=shifts,
        )
        with torch.enable_grad():
            out = self.model(batch, positions=positions)
            energy = out[keys.ENERGY].sum()
            (grad,) = torch.autograd.grad(energy, [positions])
        f = self.energy_factor
        return energy.detach() * f, -grad * f, out[keys.ATOMIC_ENERGIES].detach() * f


def example_inputs(
    elements: list[int], cutoff: float, dtype: torch.dtype, device: str = "cpu"
) -> tuple[torch.Tensor, ...]:
    """A small random cluster of the model's elements with its full pair list: inputs to trace with."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    gen = torch.Generator().manual_seed(0)
    z = [elements[k % len(elements)] for k in range(max(6, len(elements)))]
    pos = (torch.rand(len(z), 3, generator=gen, dtype=torch.float64) * 3.0).numpy()
    atoms = Atoms(numbers=z, positions=pos)
    i, j, shifts = neighbor_list("ijS", atoms, cutoff)
    return (
        torch.tensor(z, dtype=torch.int64, device=device),
        torch.tensor(pos, dtype=dtype, device=device),
        torch.tensor(i, dtype=torch.int64, device=device),
        torch.tensor(j, dtype=torch.int64, device=device),
        torch.tensor(shifts, dtype=dtype, device=device),
    )


def export_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict[str, str]:
    """Write ``model`` (pretrained name, model file or checkpoint) as an AOTInductor package to ``out``.

    Returns the metadata stored in the package. The package is written to a temporary file and renamed, so
    an interrupted export leaves no file behind. Compilation takes 30-90 s on a CPU.
    """
    import atomnet
    from atomnet.pretrained import load_with_meta

    if dtype not in DTYPES:
        raise AtomNetError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    potential, meta = load_with_meta(model)
    net = potential.model
    if not net.pair_based:  # the signature hands pairs; CMNet reads all positions
        raise AtomNetError(
            f"{model}: export needs a pair-based model (SchNet, DTNN), not {type(net).__name__}"
        )
    net = net.to(device=device, dtype=DTYPES[dtype]).eval().requires_grad_(False)
    energy_unit = meta.get("energy_unit", "eV")
    elements = sorted(int(z) for z in meta.get("elements") or [1, 6, 7, 8, 9] if z <= net.max_z)
    wrapped = ExportedPotential(net, units.energy_factor(energy_unit))
    args = example_inputs(elements, net.cutoff, DTYPES[dtype], device)

    from torch.fx.experimental.proxy_tensor import make_fx

    graph = make_fx(wrapped, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    n, p = torch.export.Dim("n_atoms", min=2), torch.export.Dim("n_pairs", min=2)
    program = torch.export.export(graph, args, dynamic_shapes=({0: n}, {0: n}, {0: p}, {0: p}, {0: p}))
    info = {
        "format": EXPORT_FORMAT,
        "signature": SIGNATURE,
        "model": type(net).__name__,
        "source": str(model),
        "cutoff_A": repr(float(net.cutoff)),
        "elements": json.dumps(sorted(int(z) for z in meta["elements"]) if meta.get("elements") else None),
        "max_z": str(int(net.max_z)),
        "energy_unit": "eV",
        "forces_unit": "eV/A",
        "length_unit": "A",
        "dtype": dtype,
        "device": str(device),
        "atomnet_version": atomnet.__version__,
        "torch_version": torch.__version__,
    }
    out = Path(out)
    if out.suffix != ".pt2":
        raise AtomNetError(f"{out}: exported packages end in .pt2")
    out.parent.mkdir(parents=True, exist_ok=True)
    from atomnet.files import atomic_output

    with atomic_output(out, suffix=".pt2") as tmp:
        # element-wise kernels on one thread: inductor's multi-threaded C++ code generation of the neighbour
        # sum fails in torch 2.13 (as for AtomNetCalculator(compile=True)); matrix products stay threaded
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(tmp),
            inductor_configs={"aot_inductor.metadata": info, "cpp.threads": 1},
        )
    return info


def load_exported(path: str | os.PathLike):
    """The packaged function of an exported file (``torch._inductor.aoti_load_package``), for Python users;
    needs only torch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: exported model file not found")
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad file
        raise AtomNetError(
            f"{path}: not an AOTInductor package ({str(exc).strip().splitlines()[0][:200]})"
        ) from None


def read_info(path: str | os.PathLike) -> dict[str, str]:
    """The atomnet metadata of an exported file (cutoff, elements, units, versions, signature)."""
    meta = dict(load_exported(path).get_metadata())
    if meta.get("format") != EXPORT_FORMAT:
        raise AtomNetError(
            f"{path}: not an atomnet export (format {meta.get('format')!r}, expected {EXPORT_FORMAT})"
        )
    return {k: v for k, v in meta.items() if not k.upper().startswith("AOTI")}  # torch adds AOTI_* keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="pretrained name, model file or checkpoint")
    parser.add_argument("out", nargs="?", help="output package (.pt2)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu", help="device the package is compiled for")
    parser.add_argument("--info", metavar="FILE", help="print the metadata of an exported file and exit")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.info:
        for key, value in read_info(args.info).items():
            print(f"{key}: {value}")
        return 0
    if not args.model or not args.out:
        raise AtomNetError("give MODEL and OUT.pt2 (or --info FILE)")
    info = export_model(args.model, args.out, dtype=args.dtype, device=args.device)
    print(f"wrote {args.out} ({info['model']}, {info['dtype']}, cutoff {info['cutoff_A']} A, eV and eV/A)")
    return 0
