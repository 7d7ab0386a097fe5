"""atomnet's compiled CPU kernels: each C++ source is built once per machine and loaded on first use.

A :class:`NativeExtension` names one source file (``atomnet/nn/kernels/cfconv.cpp`` for the fused cfconv,
``atomnet/nn/kernels/filter_conv.cpp`` for SchNet's filter network fused with it, ``atomnet/baselines/kernels/l1.cpp``
for KRR's L1 distances). It is compiled with ``torch.utils.cpp_extension``
(g++ ``-O3 -march=native -fopenmp`` and ninja, 30–60 s) into ``$ATOMNET_KERNEL_DIR/<name>_<tag>`` (default
``~/.cache/atomnet/kernels``), where the tag hashes the source, torch, Python and the CPU, so a new torch or another
CPU builds afresh. A failed build (no compiler, no headers, an unwritable folder) is recorded there as ``FAILED``
(a build stopped by a signal or Ctrl-C is not: the next process tries again);
atomnet then warns once per process and the caller uses its plain torch path: nothing requires a compiler.
``python -m atomnet.native`` builds every extension ahead (``scripts/setup.sh``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch


def cache_root() -> Path:
    """``$ATOMNET_KERNEL_DIR``, else ``$XDG_CACHE_HOME/atomnet/kernels`` (``~/.cache/atomnet/kernels``)."""
    root = os.environ.get("ATOMNET_KERNEL_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atomnet" / "kernels"


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    first = {}
    for ln in lines:
        key = ln.split(":")[0].strip()
        if key in ("model name", "flags"):
            first.setdefault(key, ln)
    return " ".join(first.values())


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` wheel (a dependency) may sit in an environment
    whose bin folder is not on PATH (a venv's python run by its full path)."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


class NativeExtension:
    """One C++ source built on first use; :meth:`load` returns the module or ``None`` (disabled or failed).

    Args:
        name: short name (``cfconv``): the module is ``atomnet_<name>``, the build folder ``<name>_<tag>``.
        source: the ``.cpp`` file (pybind11 module with ``TORCH_EXTENSION_NAME``).
        what: words for messages ("fused cfconv kernel").
        switch: environment variable that turns the extension off when ``0``/``false``/``no``/``off``.
    """

    def __init__(self, name: str, source: Path, what: str, switch: str):
        self.name, self.source, self.what, self.switch = name, Path(source), what, switch
        self.state: dict[str, ModuleType | None] = {}

    def enabled(self) -> bool:
        return os.environ.get(self.switch, "1").strip().lower() not in ("0", "false", "no", "off")

    def kernel_dir(self) -> Path:
        """The build folder of this source on this torch, Python and CPU (the build uses ``-march=native``)."""
        tag = hashlib.sha256(
            self.source.read_bytes()
            + f"{torch.__version__} {sys.version} {platform.machine()} {_cpu_id()}".encode()
        ).hexdigest()[:16]
        return cache_root() / f"{self.name}_{tag}"

    def load(self, verbose: bool = False) -> ModuleType | None:
        """The compiled module (built on first use), or ``None`` when disabled or the build failed."""
        if "module" in self.state:
            return self.state["module"]
        module = None
        if self.enabled():
            build = self.kernel_dir()
            failed = build / "FAILED"
            if failed.is_file():
                _warn(failed.read_text().strip())
            else:
                module = self._build(build, verbose)
        self.state["module"] = module
        return module

    def _build(self, build: Path, verbose: bool) -> ModuleType | None:
        from torch.utils import cpp_extension

        _ninja_on_path()
        fresh = not any(build.glob("*.so"))
        if fresh:
            print(f"atomnet: compiling the {self.what} once (about a minute) into {build}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            build.mkdir(parents=True, exist_ok=True)
            module = cpp_extension.load(
                name=f"atomnet_{self.name}",
                sources=[str(self.source)],
                build_directory=str(build),
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=verbose,
            )
        except (
            Exception
        ) as exc:  # compiler missing, headers missing, ninja missing: the plain path still works
            from atomnet.errors import first_line

            message = f"atomnet: the {self.what} could not be built ({first_line(exc)}); using the plain path"
            if _interrupted(exc):  # a killed compiler says nothing about the next try: record nothing
                _warn(message + " in this process; the next one builds again")
                return None
            with contextlib.suppress(OSError):  # an unwritable cache: warn in every process instead
                (build / "FAILED").write_text(message + "\n")
            _warn(message)
            return None
        if fresh:
            print(f"atomnet: {self.what} ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        return module


def _interrupted(exc: BaseException) -> bool:
    """Whether a build failed because it was stopped (ninja or the compiler killed by a signal, Ctrl-C), not
    because the source, compiler or headers are at fault."""
    text = str(exc).lower()
    return "interrupted" in text or "killed" in text or "signal" in text


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def extensions() -> list[NativeExtension]:
    """Every compiled extension of atomnet."""
    from atomnet.baselines.krr import L1_EXTENSION
    from atomnet.nn.fused import EXTENSION
    from atomnet.nn.fused_filter import EXTENSION as FILTER_EXTENSION

    return [EXTENSION, FILTER_EXTENSION, L1_EXTENSION]


if __name__ == "__main__":  # python -m atomnet.native: build every extension ahead (setup.sh, CI)
    for ext in extensions():
        built = ext.load(verbose="--verbose" in sys.argv)
        print(f"{ext.what}: {'ready in ' + str(ext.kernel_dir()) if built else 'not available'}")
    raise SystemExit(0)
