"""The fused cfconv kernels (atomnet.nn.fused) against the plain module path, finite differences and gradcheck."""

from __future__ import annotations

import warnings

import pytest
import torch
from ase.build import molecule
from kernel_checks import assert_same_energy_and_gradients, energy_training_step, schnet_potential

from atomnet.data import batch_from_atoms
from atomnet.nn import fused, fused_filter
from atomnet.nn.cfconv import CFConv
from atomnet.potential import Potential


@pytest.fixture(scope="module", autouse=True)
def kernels():
    """The kernels must build on the machines atomnet supports (g++ and ninja); a failure here is a real one."""
    if not fused.enabled():
        pytest.skip("ATOMNET_FUSED=0 is set")
    assert fused.load() is not None, "the fused cfconv kernel did not build (see the warning above)"


def reference(x, filters, pair_i, pair_j):
    """m_i = Σ_j x_j ∘ W_ij written out directly: gather, product (one filter for both directions of a mirrored
    list), index_add."""
    gathered, h = x[pair_j], filters.shape[0]
    w = torch.cat([filters, filters]) if pair_i.numel() == 2 * h else filters
    return torch.zeros_like(x).index_add(0, pair_i, gathered * w)


def pairs(n: int, mirrored: bool, seed: int = 0):
    """All pairs of n atoms (mirrored: [i < j; reversed]) or a random directed list with repeats."""
    if mirrored:
        i, j = torch.triu_indices(n, n, 1)
        return torch.cat([i, j]), torch.cat([j, i]), i.numel()
    g = torch.Generator().manual_seed(seed)
    i, j = torch.randint(0, n, (3 * n,), generator=g), torch.randint(0, n, (3 * n,), generator=g)
    return i, j, i.numel()


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_equals_reference(mirrored, threads):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(1)
        for n, f in ((9, 5), (700, 64)):  # 700 atoms: enough pairs for one block per thread
            i, j, h = pairs(n, mirrored)
            x, w = torch.randn(n, f, dtype=torch.float64), torch.randn(h, f, dtype=torch.float64)
            torch.testing.assert_close(
                fused.fused_cfconv(x, w, i, j), reference(x, w, i, j), rtol=1e-12, atol=1e-12
            )
    finally:
        torch.set_num_threads(n_threads)


@pytest.mark.parametrize("mirrored", [True, False])
def test_gradients_and_second_derivatives(mirrored):
    """gradcheck / gradgradcheck (finite differences, float64) of x and W, as force training needs."""
    torch.manual_seed(2)
    i, j, h = pairs(6, mirrored)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(h, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: fused.fused_cfconv(x, w, i, j)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_scaled_kernels_equal_the_reference_with_scaled_filters(mirrored, threads):
    """conv(x, W, c) = conv(x, W ∘ c) (the cutoff folded in), its gradients to x and W by gradcheck and
    gradgradcheck, on 1 and 2 threads."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(4)
        for n, f in ((9, 5), (700, 64)):
            i, j, h = pairs(n, mirrored)
            x, w = torch.randn(n, f, dtype=torch.float64), torch.randn(h, f, dtype=torch.float64)
            c = torch.rand(h, dtype=torch.float64)
            torch.testing.assert_close(
                fused.fused_cfconv(x, w, i, j, scale=c),
                reference(x, w * c[:, None], i, j),
                rtol=1e-12,
                atol=1e-12,
            )
    finally:
        torch.set_num_threads(n_threads)
    i, j, h = pairs(6, mirrored)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(h, 3, dtype=torch.float64, requires_grad=True)
    c = torch.rand(h, dtype=torch.float64)
    fn = lambda x, w: fused.fused_cfconv(x, w, i, j, scale=c)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))
    c.requires_grad_()  # a scale that needs a gradient (forces): the one-pass kernel and the differentiable ops
    fn = lambda x, w, c: fused.fused_cfconv(x, w, i, j, scale=c)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, c))
    assert torch.autograd.gradgradcheck(fn, (x, w, c))
    g = torch.randn(6, 3, dtype=torch.float64)
    plain = torch.autograd.grad(reference(x, w * c[:, None], i, j), (x, w, c), g)
    for got, want in zip(torch.autograd.grad(fn(x, w, c), (x, w, c), g), plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mirrored", [True, False])
def test_force_training_backward_of_the_scaled_kernel(mirrored):
    """The create_graph backward of conv(x, W, c) with c needing a gradient is :class:`fused._OuterGrads`; its
    backward (one kernel pass, what force training's loss.backward runs) equals the same derivatives of the
    plain ops, and its differentiable fallback gives third derivatives by gradgradcheck (finite differences)."""
    torch.manual_seed(7)
    i, j, h = pairs(7, mirrored)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(h, 4, dtype=torch.float64, requires_grad=True)
    c = torch.rand(h, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)

    def first(conv):  # the first derivatives in (x, W, c) for the upstream gradient g, as a graph
        return torch.autograd.grad(conv(x, w, c), (x, w, c), g, create_graph=True)

    fused_first = first(lambda x, w, c: fused.fused_cfconv(x, w, i, j, scale=c))
    plain_first = first(lambda x, w, c: reference(x, w * c[:, None], i, j))
    assert fused_first[1].grad_fn.name().startswith("_OuterGrads"), fused_first[1].grad_fn.name()
    weights = [torch.randn_like(t) for t in fused_first]
    inputs = (x, w, c, g)

    def weighted(first_grads):
        return sum((a * b).sum() for a, b in zip(first_grads, weights, strict=True))

    want = torch.autograd.grad(weighted(plain_first), inputs)
    got = torch.autograd.grad(weighted(fused_first), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    def grads_w_c(x, w, c, g):  # (∂L/∂W, ∂L/∂c) of the conv: the map _OuterGrads computes
        out = fused.fused_cfconv(x, w, i, j, scale=c)
        return torch.autograd.grad(out, (w, c), g, create_graph=True)

    leaves = tuple(t.detach().clone().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(grads_w_c, leaves)
    assert torch.autograd.gradgradcheck(grads_w_c, leaves)


def test_the_folded_cutoff_equals_the_plain_path(monkeypatch):
    """The cutoff goes into the kernel as a scale: energy training's energies and parameter gradients, and
    inference forces (∂L/∂f_c from the kernel), equal the plain module path (force training: the test above).
    Energy training would take the fused filter network (tests/test_fused_filter.py); here it is off, as where
    that kernel did not build."""
    monkeypatch.setitem(fused_filter.EXTENSION.state, "module", None)
    pot = schnet_potential()
    batch = batch_from_atoms([molecule("CH3CH2OH"), molecule("C6H6")], cutoff=4.0, dtype=torch.float64)
    scales = []
    original = fused._Conv.forward
    monkeypatch.setattr(
        fused._Conv,
        "forward",
        staticmethod(lambda ctx, x, w, c, *a: scales.append(c.numel()) or original(ctx, x, w, c, *a)),
    )

    e_fused, g_fused = energy_training_step(pot, batch)
    h = batch.pair_i.numel() // 2
    assert scales and all(n == h for n in scales), "the cutoff was not folded into the kernel"
    scales.clear()
    force_training_step(pot, batch)
    assert scales and all(n in (h, 0) for n in scales) and h in scales, "no scale in force training"
    inference = pot.eval()(
        batch, forces=True
    )  # forces without create_graph: ∂L/∂f_c from the one-pass kernel
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    inference_plain = pot(batch, forces=True)
    for key in ("energy", "forces"):
        torch.testing.assert_close(inference[key], inference_plain[key], rtol=1e-12, atol=1e-12)
    pot.train()
    e_plain, g_plain = energy_training_step(pot, batch)
    assert_same_energy_and_gradients((e_fused, g_fused), (e_plain, g_plain))


def test_a_hooked_filter_network_is_not_folded(monkeypatch):
    """A forward hook on the filter network sees W ∘ f_c, the value it sees without the fused kernels."""
    pot = schnet_potential().eval()
    batch = batch_from_atoms([molecule("CH3CH2OH")], cutoff=4.0, dtype=torch.float64)
    block = pot.model.interactions[0]

    def hooked_run():
        seen = []
        handle = block.filter_network.register_forward_hook(lambda m, args, out: seen.append(out))
        try:
            with torch.no_grad():
                return pot(batch, forces=False)["energy"], seen
        finally:
            handle.remove()

    energy, seen = hooked_run()
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    energy_plain, seen_plain = hooked_run()
    assert len(seen) == len(seen_plain) == 1
    torch.testing.assert_close(seen[0], seen_plain[0], rtol=0, atol=0)
    torch.testing.assert_close(energy, energy_plain, rtol=1e-12, atol=1e-12)


def test_empty_pair_list():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.zeros(0, 4, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    out = fused.fused_cfconv(x, w, empty, empty)
    assert torch.equal(out, torch.zeros(3, 4))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros(3, 4))


def force_training_step(pot: Potential, batch) -> tuple[dict, list[torch.Tensor]]:
    """Energies, forces and the parameter gradients of an energy + force loss (a double backward)."""
    pot.zero_grad()
    out = pot(batch, forces=True, create_graph=True)
    loss = (out["energy"] ** 2).sum() + (out["forces"] ** 2).sum()
    loss.backward()
    return out, [p.grad.clone() for p in pot.parameters() if p.grad is not None]


def test_schnet_fused_equals_plain_path(monkeypatch):
    """The whole model: energies, forces and force-training gradients equal the plain module path (float64)."""
    pot = schnet_potential()
    batch = batch_from_atoms([molecule("CH3CH2OH"), molecule("C6H6")], cutoff=4.0, dtype=torch.float64)
    assert batch.mirrored
    calls = []
    original = fused._Conv.forward
    monkeypatch.setattr(fused._Conv, "forward", staticmethod(lambda *a: calls.append(1) or original(*a)))
    out_fused, grads_fused = force_training_step(pot, batch)
    assert calls, "the fused kernel was not used"
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    calls.clear()
    out_plain, grads_plain = force_training_step(pot, batch)
    assert not calls
    for key in ("energy", "forces"):
        torch.testing.assert_close(out_fused[key], out_plain[key], rtol=1e-12, atol=1e-12)
    assert len(grads_fused) == len(grads_plain) > 0
    for a, b in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_fused_matches_float64_to_round_off():
    torch.manual_seed(3)
    i, j, h = pairs(40, mirrored=True)
    x, w = torch.randn(40, 32, dtype=torch.float64), torch.randn(h, 32, dtype=torch.float64)
    exact = reference(x, w, i, j)
    approx = fused.fused_cfconv(x.float(), w.float(), i, j).double()
    assert ((approx - exact).abs().max() / exact.abs().max()).item() < 1e-6


def test_hooked_parts_run_as_modules():
    """A hook on a part of the CFConv (as explanation rules attach) sees it run: the fused path steps aside."""
    conv = CFConv()
    i, j, h = pairs(5, mirrored=True)
    x, w = torch.randn(5, 4), torch.randn(h, 4)
    seen = []
    handle = conv.gather.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    try:
        hooked = conv(x, w, i, j)
    finally:
        handle.remove()
    assert seen == [torch.Size([2 * h, 4])]
    torch.testing.assert_close(hooked, conv(x, w, i, j))
    assert conv._fusable(x, w, i) and not conv._fusable(x, w[:, :1], i)  # (h, 1) filters: plain path


def test_an_interrupted_build_is_not_recorded(tmp_path, monkeypatch):
    """A build whose compiler was killed (Ctrl-C, a signal) falls back in this process only: the next one builds."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("ATOMNET_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(fused.EXTENSION, "state", {})

    def interrupted(**kwargs):
        raise RuntimeError("Error building extension 'atomnet_cfconv': ninja: build stopped: interrupted by user.")

    monkeypatch.setattr(cpp_extension, "load", interrupted)
    with pytest.warns(RuntimeWarning, match="could not be built .*the next one builds again"):
        assert fused.load() is None
    assert not (fused.kernel_dir() / "FAILED").exists()
    monkeypatch.setattr(fused.EXTENSION, "state", {})
    built = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: built.append(1) or "module")
    assert fused.load() == "module" and built == [1]


def test_failed_build_falls_back_with_one_warning(tmp_path, monkeypatch):
    """A compiler error is recorded next to the build, warned about once, and the plain path still works."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("ATOMNET_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(fused.EXTENSION, "state", {})

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'atomnet_cfconv': g++ not found\nmore lines")

    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.warns(RuntimeWarning, match="could not be built .*g\\+\\+ not found.*plain path"):
        assert fused.load() is None
    assert "g++ not found" in (fused.kernel_dir() / "FAILED").read_text()
    monkeypatch.setattr(
        fused.EXTENSION, "state", {}
    )  # a later process reads the record instead of compiling again
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: pytest.fail("compiled again"))
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert fused.load() is None
    i, j, h = pairs(5, mirrored=True)
    x, w = torch.randn(5, 4, dtype=torch.float64), torch.randn(h, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(CFConv()(x, w, i, j), reference(x, w, i, j))


def test_not_used_under_torch_compile_tracing():
    """Fake tensors (torch.compile, torch.export) never reach the C++ kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(4, 3)
    assert not fused.usable(x)
    assert fused.usable(torch.randn(4, 3)) and not fused.usable(torch.randn(4, 3, dtype=torch.float16))


def test_hessian_takes_the_batched_backward(monkeypatch):
    """The Hessian's vectorised backward passes (vmap) reach the kernels' gradients as batched tensors: they
    run as torch ops there (batching rules), not row by row, and the Hessian equals the plain path's."""
    from atomnet.potential import hessian

    pot = schnet_potential().eval()
    batch = batch_from_atoms([molecule("CH3CH2OH")], cutoff=4.0, dtype=torch.float64)
    calls = []
    plain_conv = fused._plain_conv
    monkeypatch.setattr(fused, "_plain_conv", lambda *a: calls.append(1) or plain_conv(*a))
    fast = hessian(pot.model, batch, rows_per_pass=27)
    assert calls, "the batched backward did not reach the kernels' gradients"
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    torch.testing.assert_close(fast, hessian(pot.model, batch, rows_per_pass=27), rtol=1e-10, atol=1e-10)


def test_vmap_over_the_model_takes_the_plain_ops():
    """torch.vmap over a CFConv (batched inputs, no storage) runs the plain ops and equals a loop."""
    conv = CFConv()
    i, j, h = pairs(5, mirrored=True)
    x, w = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(h, 4, dtype=torch.float64)
    batched = torch.vmap(lambda xb: conv(xb, w, i, j))(x)
    torch.testing.assert_close(batched, torch.stack([reference(xb, w, i, j) for xb in x]))


def test_unusable_kernel_dir_falls_back_with_a_warning(tmp_path, monkeypatch):
    """ATOMNET_KERNEL_DIR naming a file (no folder can be made there): one warning, no traceback, plain path."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("ATOMNET_KERNEL_DIR", str(blocker))
    monkeypatch.setattr(fused.EXTENSION, "state", {})
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert fused.load() is None


def table_reference(x, coefficients, spacing, r, fcut, pair_i, pair_j):
    """The tabulated filter as its module (``TabulatedFilter``), then the direct convolution."""
    from atomnet.nn.tabulated import TabulatedFilter

    return reference(x, TabulatedFilter(coefficients, spacing)(r, fcut), pair_i, pair_j)


def random_table(f: int, n_segments: int = 12, spacing: float = 0.5):
    torch.manual_seed(11)
    from atomnet.nn.tabulated import hermite_coefficients

    values = torch.randn(n_segments + 1, f, dtype=torch.float64)
    slopes = torch.randn(n_segments + 1, f, dtype=torch.float64)
    return hermite_coefficients(values, slopes, spacing), spacing


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_table_kernel_equals_the_tabulated_module(mirrored, threads):
    """The convolution with filters interpolated inside the kernel equals TabulatedFilter + the direct sum,
    values and first derivatives in (x, r, f_c), also at r = 0, on a node and beyond the table's end."""
    coefficients, spacing = random_table(8)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in (9, 400):
            i, j, h = pairs(n, mirrored)
            x = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
            r = (torch.rand(h, dtype=torch.float64) * 7.0).requires_grad_()  # the table ends at 6
            with torch.no_grad():
                r[:3] = torch.tensor([0.0, 2.5, 6.0])
            fcut = torch.rand(h, dtype=torch.float64, requires_grad=True)
            got = fused.fused_table_cfconv(x, coefficients, spacing, r, fcut, i, j)
            want = table_reference(x, coefficients, spacing, r, fcut, i, j)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            g = torch.randn_like(got)
            for a, b in zip(
                torch.autograd.grad(got, (x, r, fcut), g),
                torch.autograd.grad(want, (x, r, fcut), g),
                strict=True,
            ):
                torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    finally:
        torch.set_num_threads(n_threads)


@pytest.mark.parametrize("mirrored", [True, False])
def test_table_kernel_gradcheck_and_second_derivatives(mirrored):
    """gradcheck (the one-pass kernel backward) and gradgradcheck (the differentiable backward) by finite
    differences, with distances inside segments (the Hermite interpolant is C¹, its second derivative jumps at
    nodes)."""
    coefficients, spacing = random_table(3)
    i, j, h = pairs(6, mirrored)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    segment = torch.randint(0, 11, (h,), generator=torch.Generator().manual_seed(2))
    r = ((segment + 0.2 + 0.6 * torch.rand(h, dtype=torch.float64)) * spacing).requires_grad_()
    fcut = torch.rand(h, dtype=torch.float64, requires_grad=True)
    fn = lambda x, r, c: fused.fused_table_cfconv(x, coefficients, spacing, r, c, i, j)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, r, fcut))
    assert torch.autograd.gradgradcheck(fn, (x, r, fcut))


def test_tabulated_schnet_takes_the_table_kernel(monkeypatch):
    """A tabulated SchNet (``tabulate_filters``): energies, forces and the Hessian through the table kernel
    equal the module path (``ATOMNET_FUSED=0``) in float64, and no filter array is formed."""
    from atomnet.models import tabulate_filters
    from atomnet.potential import hessian

    pot = Potential(tabulate_filters(schnet_potential().model)).eval()
    batch = batch_from_atoms([molecule("CH3CH2OH"), molecule("C6H6")], cutoff=4.0, dtype=torch.float64)
    calls = []
    original = fused._TableConv.forward
    monkeypatch.setattr(fused._TableConv, "forward", staticmethod(lambda *a: calls.append(1) or original(*a)))
    fast = pot(batch, forces=True)
    assert len(calls) == 2, "the table kernel was not used by both interactions"
    one = batch_from_atoms([molecule("CH3CH2OH")], cutoff=4.0, dtype=torch.float64)
    fast_hessian = hessian(pot.model, one, rows_per_pass=27)
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    calls.clear()
    slow = pot(batch, forces=True)
    assert not calls
    for key in ("energy", "forces"):
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        fast_hessian, hessian(pot.model, one, rows_per_pass=27), rtol=1e-10, atol=1e-10
    )
