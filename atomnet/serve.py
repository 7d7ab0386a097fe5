"""Serve an atomnet potential to i-PI over a socket, and the ``atomnet serve`` command.

atomnet is the *client* (the "driver" in i-PI's words): i-PI is the server that owns the dynamics (MD,
path-integral MD, geometry optimisation, ...), opens a UNIX or TCP socket and sends positions and cell; the
client answers with energy, forces and virial. The protocol is ASE's
:class:`ase.calculators.socketio.SocketClient`; this module only connects, checks and counts.

Units: i-PI talks atomic units on the wire (Hartree, Bohr, Hartree/Bohr); ``SocketClient`` converts to and
from ASE's eV and Å with ``ase.units`` (CODATA 2014), so the calculator sees eV/Å as always. i-PI converts its
own outputs with its own constants (``{electronvolt}`` is 0.036749326 Hartree, 1e-7 away from ASE's value):
ask i-PI for ``{atomic_unit}`` or ``{ase}`` units to compare its output with atomnet energies to round-off.

i-PI only sends positions and the cell: the structure file gives the atomic numbers, their order (the same
as in i-PI's ``<initialize>`` file) and the periodicity (a periodic structure also sends the virial).
"""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.socketio import SocketClient, actualunixsocketname

from atomnet.errors import AtomNetError

#: Seconds between two connection attempts while the server is not (yet) listening.
RETRY_INTERVAL = 0.2


def socket_name(unixsocket: str | None = None, host: str | None = None, port: int | None = None) -> str:
    """How the socket is named in messages: ``UNIX socket /tmp/ipi_NAME`` or ``INET socket HOST:PORT``."""
    if unixsocket is not None:
        return f"UNIX socket {actualunixsocketname(unixsocket)}"
    return f"INET socket {host or 'localhost'}:{port}"


def connect(
    unixsocket: str | None = None,
    host: str | None = None,
    port: int | None = None,
    timeout: float = 60.0,
    log: TextIO | None = None,
) -> SocketClient:
    """Connect to an i-PI server, retrying every :data:`RETRY_INTERVAL` s for up to ``timeout`` s.

    Exactly one of ``unixsocket`` (i-PI's ``<address>`` of a ``mode='unix'`` socket; the file is
    ``/tmp/ipi_NAME``) or ``port`` (with ``host``, default localhost) is given. Raises
    :class:`AtomNetError` naming the socket if nothing accepts the connection in time.
    """
    if (unixsocket is None) == (port is None):
        raise AtomNetError("give exactly one of a UNIX socket name or an INET port")
    name = socket_name(unixsocket, host, port)
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        try:  # blocking reads once connected: i-PI may keep a client waiting while others compute
            return SocketClient(host=host or "localhost", port=port, unixsocket=unixsocket, log=log)
        except (FileNotFoundError, ConnectionRefusedError) as exc:  # no server (yet)
            if time.monotonic() >= deadline:
                reason = "no such socket file" if isinstance(exc, FileNotFoundError) else "connection refused"
                raise AtomNetError(
                    f"no i-PI server at {name} after {timeout:g} s ({reason}); start i-pi first and check "
                    "the <ffsocket> mode/address/port of its input"
                ) from None
        except OSError as exc:  # unknown host, permission denied, path too long, ...
            raise AtomNetError(f"cannot connect to {name}: {exc}") from None
        time.sleep(RETRY_INTERVAL)


def serve(
    calculator: Calculator,
    atoms: Atoms,
    unixsocket: str | None = None,
    host: str | None = None,
    port: int | None = None,
    timeout: float = 60.0,
    log: TextIO | None = None,
) -> int:
    """Connect to i-PI as a force client and answer its requests until it sends EXIT.

    Args:
        calculator: any ASE calculator (eV, Å), e.g. :class:`atomnet.calculator.AtomNetCalculator`.
        atoms: atomic numbers, order and pbc of the system i-PI simulates; its positions and cell are
            overwritten by each request (positions (n_atoms, 3) Å, cell (3, 3) Å). Periodic atoms (any pbc)
            also answer the virial −V σ (eV) from the calculator's stress.
        unixsocket: name of i-PI's UNIX socket (``/tmp/ipi_NAME``); or ``port`` (and ``host``) of a TCP one.
        timeout: seconds to keep retrying the connection while no server listens.
        log: file for ASE's protocol messages (debugging).

    Returns:
        The number of force evaluations served (one per bead and step).

    Raises:
        AtomNetError: no server listening within ``timeout``; i-PI sent a different number of atoms; the
            connection closed without EXIT (i-PI crashed or was killed).
    """
    atoms.calc = calculator
    client = connect(unixsocket, host, port, timeout, log)
    receive = client.protocol.recvposdata

    def checked_positions():  # i-PI sends no species: the count is all that can be checked
        cell, icell, positions = receive()
        if len(positions) != len(atoms):
            raise AtomNetError(
                f"i-PI sent {len(positions)} atoms but the structure has {len(atoms)}: initialise i-PI "
                "with the same structure (same atoms, same order)"
            )
        return cell, icell, positions

    receive_message = client.protocol.recvmsg
    exited = []

    def noted_message() -> str:  # ASE treats a closed socket as EXIT: tell the two apart
        message = receive_message()
        exited.append(message == "EXIT")
        return message

    client.protocol.recvposdata = checked_positions
    client.protocol.recvmsg = noted_message
    n, reset = 0, ""
    try:
        for _ in client.irun(atoms):
            n += 1
    except (ConnectionResetError, BrokenPipeError) as exc:
        reset = f", {exc.strerror or exc}"
    finally:
        client.close()
    if reset or not (exited and exited[-1]):
        raise AtomNetError(
            f"i-PI closed {socket_name(unixsocket, host, port)} without EXIT after {n} force evaluations"
            f"{reset} (did i-PI stop with an error? see its output)"
        )
    return n


# --- the `atomnet serve` command ------------------------------------------------------------------------


def parse_inet(address: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); a bare ``PORT`` means localhost. Raises :class:`AtomNetError`."""
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise AtomNetError(
            f"--inet {address!r}: expected HOST:PORT with a port in 1..65535, e.g. localhost:31415"
        )
    return host or "localhost", number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="pretrained name (e.g. schnet-md17-ethanol), model file or checkpoint")
    parser.add_argument(
        "structure",
        help="structure file readable by ase.io.read (first frame): atomic numbers and order as in i-PI's "
        "<initialize> file, and the pbc",
    )
    parser.add_argument(
        "--unix", metavar="NAME", help="i-PI UNIX socket name (i-PI's <address>; /tmp/ipi_NAME)"
    )
    parser.add_argument("--inet", metavar="HOST:PORT", help="i-PI TCP socket, e.g. localhost:31415")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to keep retrying while no server listens"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--skin", type=float, default=0.5, help="Verlet skin, Å")
    parser.add_argument(
        "--energy-unit", default=None, help="model energy unit (default: from the file, else eV)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log", default=None, help="file for the socket protocol messages (debugging)")


def run(args: argparse.Namespace) -> int:
    if (args.unix is None) == (args.inet is None):
        raise AtomNetError("give exactly one of --unix NAME or --inet HOST:PORT")
    host, port = parse_inet(args.inet) if args.inet is not None else (None, None)
    import torch

    from atomnet.calculator import AtomNetCalculator
    from atomnet.data.ase_io import read_structure

    atoms = read_structure(args.structure)
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {"skin": args.skin}
    if args.energy_unit:
        kwargs["energy_unit"] = args.energy_unit
    calc = AtomNetCalculator.from_checkpoint(
        args.model, device=args.device, dtype=getattr(torch, args.dtype), **kwargs
    )
    name = socket_name(args.unix, host, port)
    print(f"atomnet serve: {args.model} on {len(atoms)} atoms, connecting to {name}", flush=True)
    log = open(args.log, "w") if args.log else None  # noqa: SIM115
    start = time.perf_counter()
    try:
        n = serve(calc, atoms, args.unix, host, port, timeout=args.timeout, log=log)
    finally:
        if log is not None:
            log.close()
    elapsed = time.perf_counter() - start
    print(f"served {n} force evaluations in {elapsed:.1f} s; i-PI sent EXIT")
    return 0
