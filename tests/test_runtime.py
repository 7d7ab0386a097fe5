"""atomnet/runtime.py: the allocator settings keep freed tensor pages in the process (fewer page faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Round k allocates ten tensors of (8 + k) MiB and frees them, twenty rounds (growing sizes, as batches of
# growing molecules do, defeat glibc's dynamic mmap threshold); count minor page faults (pages handed back to
# the kernel and faulted in again). Building a Potential applies atomnet's settings unless ATOMNET_MALLOC=default.
PROGRAM = r"""
import json, resource, sys, torch
from atomnet.models import SchNet
from atomnet.potential import Potential
from atomnet.runtime import tune_allocator
Potential(SchNet(n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=4))
[torch.ones(2 * 1024 * 1024) for _ in range(10)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for k in range(20):
    [torch.ones((8 + k) * 256 * 1024) for _ in range(10)]
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"faults": after - before, "applied": tune_allocator()}))
"""


def faults(malloc: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["ATOMNET_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_tuned_allocator_keeps_freed_pages():
    default, tuned = faults("default"), faults("")
    assert default["applied"] is False and tuned["applied"] is True
    # glibc's defaults map and unmap every block: 10 x (8 + k) MiB per round, ~890,000 pages in all (at least
    # the ~600,000 of the rounds after the first few). Tuned, the heap only grows to the largest round's 270 MiB
    # (69,120 pages).
    assert default["faults"] > 400_000, default
    assert tuned["faults"] < 70_000, tuned


def test_preloaded_allocator_is_left_alone(monkeypatch):
    from atomnet import runtime

    monkeypatch.setattr(runtime, "_state", {})
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4")
    assert runtime.tune_allocator() is False


def test_openmp_spin_is_bounded_unless_the_user_chose_a_wait_policy():
    """``import atomnet`` sets ``GOMP_SPINCOUNT`` (a bounded spin) only where the user set no OpenMP wait policy."""
    from atomnet.runtime import OPENMP_SPIN_COUNT, bounded_openmp_spin

    env: dict[str, str] = {}
    assert bounded_openmp_spin(env) and env == {"GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)}
    for chosen in (
        {"OMP_WAIT_POLICY": "PASSIVE"},
        {"GOMP_SPINCOUNT": "300000"},
        {"ATOMNET_OMP_WAIT": "default"},
    ):
        env = dict(chosen)
        assert not bounded_openmp_spin(env) and env == chosen


def test_import_atomnet_sets_the_spin_before_torch_starts_openmp():
    """In a fresh interpreter ``import atomnet`` sets the variable, and libgomp (torch's OpenMP) accepts it."""
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ATOMNET_OMP_WAIT")
    }
    code = "import os, atomnet, torch; torch.ones(4096, 64).sum(); print(os.environ.get('GOMP_SPINCOUNT'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["10000"] and "GOMP_SPINCOUNT" not in done.stderr
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["None"]
