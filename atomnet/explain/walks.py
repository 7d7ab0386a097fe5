"""Higher-order explanations: relevant walks through the interaction blocks (GNN-LRP, Schnake et al., TPAMI 2021).

A walk i₀ → i₁ → … → i_T visits one atom per representation x⁰, x¹, …, x^T (i₀ the input atom whose embedding
receives the relevance, i_T the atom whose energy is read out); a step goes to a neighbour within the cutoff or
stays on the same atom (the residual path). Its relevance is what LRP puts on x⁰_{i₀} when, after the embedding and
after every block t, only atom i_t's features pass relevance on (Schnake et al.'s h ← h·m + (1−m)·h.detach()).

Under an LRP rule the relevance map of a block is linear once the forward pass is fixed, so
R^{t−1}_c = Σ_b M_t[c←b] R^t_b with one F × F matrix per atom (c = b) and per neighbour pair, and

    R(i₀, …, i_T) = 1ᵀ M_1[i₀←i₁] M_2[i₁←i₂] ⋯ M_T[i_{T−1}←i_T] R^T_{i_T}.

:func:`transfer_matrices` gets every M_t from one recorded forward pass (no pass per walk): the block's recorded
module calls are replayed backwards on (source atom, row) → matrix entries, with the rules' per-row Jacobians.
Walks are then enumerated by dynamic programming over shared suffixes (batched matrix products), or, for pair and
subgraph relevance, never listed at all (a product of restricted matrices per atom set; Xiong et al., ICML 2022).
Conservation: Σ over walks starting at i₀ = the LRP relevance of atom i₀ (same rule), and Σ over all walks +
``unexplained`` = energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from atomnet import keys
from atomnet.data.batch import AtomsBatch
from atomnet.errors import ExplanationError
from atomnet.explain.methods import get_method
from atomnet.explain.propagation import TapeEntry, attach
from atomnet.explain.rules import AlphaBeta, Epsilon, Gamma, ZPlus
from atomnet.nn.ops import GatherNeighbors, NeighborSum, ResidualAdd

DENSE_RULES = (Epsilon, Gamma, AlphaBeta, ZPlus)
MAX_MEMORY_GB = 2.0  #: default bound on the memory a walk enumeration may allocate


@dataclass
class Transfer:
    """The relevance map of one block: ``matrices[e]`` (F, F) sends relevance of x^t at atom ``src[e]`` to
    x^{t−1} at atom ``dst[e]`` (dst = src: the atom itself; otherwise a neighbour)."""

    src: torch.Tensor
    dst: torch.Tensor
    matrices: torch.Tensor


@dataclass
class WalkModel:
    """Everything walks need from one forward pass: energies (n_molecules,), the relevance at the last block's
    output R^T (n_atoms, F), the transfers of blocks 1..T, the LRP atom relevance and unexplained of the rule."""

    batch: AtomsBatch
    energy: torch.Tensor
    top: torch.Tensor
    transfers: list[Transfer]
    atom_relevance: torch.Tensor
    unexplained: torch.Tensor


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "interactions", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ExplanationError(f"{type(model).__name__} has no interaction blocks (model.interactions)")
    return list(blocks)


def _coalesce(src, row, mats, n_rows):
    key = src * n_rows + row
    unique, inverse = torch.unique(key, return_inverse=True)
    out = mats.new_zeros((unique.numel(),) + mats.shape[1:]).index_add_(0, inverse, mats)
    return unique // n_rows, unique % n_rows, out


def _dense_jacobian(entry: TapeEntry) -> torch.Tensor:
    """(rows, in, out): the rule's map R_out → R_in of a dense layer, row by row, from a basis of R_out."""
    out = entry.output
    basis = torch.eye(out.shape[-1], dtype=out.dtype, device=out.device)[:, None, :].expand(-1, *out.shape)
    (r_in,) = entry.rule.relevance(entry.module, entry.inputs, out, basis)
    return r_in.permute(1, 2, 0)


def _replay_block(
    entries: list[TapeEntry], block_in: int, block_out: int, batch: AtomsBatch, dtype
) -> Transfer:
    """Run a block's rules backwards on (source atom, row) → (F_row, F) entries, from the identity at the
    block's output to its input."""
    n = batch.numbers.shape[0]
    feats = entries[-1].output.shape[-1]
    eye = torch.eye(feats, dtype=dtype, device=batch.positions.device)
    states: dict[int, list] = {block_out: [(torch.arange(n), torch.arange(n), eye.expand(n, -1, -1), n)]}
    for entry in reversed(entries):
        parts = states.pop(entry.out_id, None)
        if parts is None:
            continue
        n_rows = parts[0][3]
        src, row, mats = _coalesce(
            torch.cat([p[0] for p in parts]),
            torch.cat([p[1] for p in parts]),
            torch.cat([p[2] for p in parts]),
            n_rows,
        )
        module, rule = entry.module, entry.rule
        results: list[tuple] = []  # (input id, src, row, mats, n_rows of that input)
        if isinstance(module, GatherNeighbors):
            pair_j = entry.inputs[1]
            results.append((entry.in_ids[0], src, pair_j[row], mats, entry.inputs[0].shape[0]))
        elif isinstance(module, NeighborSum):
            messages, pair_i, _ = entry.inputs
            (coef, _, _) = rule.relevance(module, entry.inputs, entry.output, torch.ones_like(entry.output))
            e_idx, pairs = _expand(pair_i, row, entry.output.shape[0])  # the pairs of each centre
            results.append(
                (entry.in_ids[0], src[e_idx], pairs, coef[pairs][:, :, None] * mats[e_idx], messages.shape[0])
            )
        elif isinstance(module, ResidualAdd):
            coefs = rule.relevance(module, entry.inputs, entry.output, torch.ones_like(entry.output))
            for k, in_id in zip(entry.carry, entry.in_ids, strict=True):
                results.append((in_id, src, row, coefs[k][row][:, :, None] * mats, n_rows))
        elif rule.exact:
            results.append((entry.in_ids[0], src, row, mats, n_rows))
        elif isinstance(rule, DENSE_RULES) and isinstance(module, nn.Linear):
            jac = _dense_jacobian(entry)  # (rows, in, out)
            results.append((entry.in_ids[0], src, row, torch.bmm(jac[row], mats), n_rows))
        else:
            raise ExplanationError(
                f"walks: module {entry.name!r} ({type(module).__name__}) inside an interaction block is not supported"
            )
        for in_id, s, r, m, rows in results:
            states.setdefault(in_id, []).append((s, r, m, rows))
    if block_in not in states:
        raise ExplanationError(
            "walks: relevance did not reach the block input (an operation that is not a module?)"
        )
    parts = states.pop(block_in)
    src, dst, mats = _coalesce(
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
        n,
    )
    return Transfer(src, dst, mats)


def transfer_matrices(model, batch: AtomsBatch, rule: str = "lrp-gamma", **params) -> WalkModel:
    """One recorded forward pass of ``model`` on ``batch`` under LRP method ``rule`` → :class:`WalkModel`."""
    method = get_method(rule)
    if not hasattr(method, "composite"):
        raise ExplanationError(f"walks need an LRP rule (lrp-0, lrp-epsilon, lrp-gamma, ...), not {rule!r}")
    comp = method.composite(method.resolve(params))
    marks: list[tuple[int, int, int, int]] = []  # (tape start, tape end, input id, output id) per block call
    pending: list[tuple[int, int]] = []
    with torch.enable_grad(), attach(model, comp, batch, record=True) as state:
        tape = state.tape

        def pre(module, args):
            pending.append((len(tape), id(args[0])))

        def post(module, args, output):
            start, in_id = pending.pop()
            marks.append((start, len(tape), in_id, id(output)))
            keep.append(output)

        keep: list[torch.Tensor] = []
        handles = []
        for block in _blocks(model):
            handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
        try:
            energy = model(batch)[keys.ENERGY]
        finally:
            for h in handles:
                h.remove()
        leaf = state.leaves[0]
        top, grad0 = torch.autograd.grad(energy, [keep[-1], leaf], grad_outputs=energy.detach())
    dtype = top.dtype
    transfers = []
    for start, end, in_id, out_id in marks:
        transfers.append(_replay_block(tape[start:end], in_id, out_id, batch, dtype))
    if marks and marks[0][2] != id(leaf):
        raise ExplanationError("walks: the first interaction block does not take the embedding as its input")
    unexplained = sum(state.absorbed.values(), torch.zeros_like(energy))
    return WalkModel(
        batch, energy.detach(), top.detach(), transfers, grad0.sum(1).detach(), unexplained.detach()
    )


# --- walk enumeration -------------------------------------------------------------------------------------


def walk_counts(wm: WalkModel) -> int:
    """Number of walks, by dynamic programming on counts (nothing is enumerated)."""
    n = wm.batch.numbers.shape[0]
    count = torch.ones(n, dtype=torch.float64)
    for tr in reversed(wm.transfers):
        count = torch.zeros(n, dtype=torch.float64).index_add_(0, tr.dst, count[tr.src])
    return int(count.sum().item())


def _grouped(index: torch.Tensor, n: int):
    """Order of items sorted by ``index``, their slot within each group, group sizes and the largest one."""
    order = torch.argsort(index, stable=True)
    sizes = torch.bincount(index, minlength=n)
    first = torch.cumsum(sizes, 0) - sizes
    slot = torch.empty_like(order)
    slot[order] = torch.arange(order.numel()) - first[index[order]]
    return slot, sizes, int(sizes.max().item()) if sizes.numel() else 0


def enumerate_walks(wm: WalkModel, max_memory_gb: float = MAX_MEMORY_GB) -> tuple[torch.Tensor, torch.Tensor]:
    """All walks (W, T+1) (atom indices, i₀ first) and their relevances (W,), by DP over shared suffixes."""
    n = wm.batch.numbers.shape[0]
    n_walks = walk_counts(wm)
    feats = wm.top.shape[1]
    need = n_walks * (8 * (len(wm.transfers) + 2)) + 3 * n_walks * 8
    if need > max_memory_gb * 2**30:
        raise ExplanationError(
            f"{n_walks:,} walks need about {need / 2**30:.1f} GB (> {max_memory_gb} GB): use top_k=K, "
            "pair_relevance or subgraph_relevance, which do not list every walk, or raise max_memory_gb"
        )
    heads = torch.arange(n)
    walks = heads[:, None]
    vectors = wm.top  # suffix vectors at their head atom
    for level, tr in enumerate(reversed(wm.transfers)):
        last = level == len(wm.transfers) - 1
        e_slot, e_sizes, e_max = _grouped(tr.src, n)
        s_slot, s_sizes, s_max = _grouped(heads, n)
        if last:  # only 1ᵀ M is needed: scalars
            u = torch.zeros(n, e_max, feats, dtype=vectors.dtype).index_put_(
                (tr.src, e_slot), tr.matrices.sum(1)
            )
        else:
            u = torch.zeros(n, e_max, feats, feats, dtype=vectors.dtype).index_put_(
                (tr.src, e_slot), tr.matrices
            )
        v = torch.zeros(n, s_max, feats, dtype=vectors.dtype).index_put_((heads, s_slot), vectors)
        prod = torch.einsum("bef,bsf->bes", u, v) if last else torch.einsum("befg,bsg->besf", u, v)
        # valid (entry, suffix) combinations: entry e of source b with suffix s of head b
        e_of = torch.full((n, max(e_max, 1)), -1, dtype=torch.long).index_put_(
            (tr.src, e_slot), torch.arange(tr.src.numel())
        )
        s_of = torch.full((n, max(s_max, 1)), -1, dtype=torch.long).index_put_(
            (heads, s_slot), torch.arange(heads.numel())
        )
        valid = (e_of[:, :, None] >= 0) & (s_of[:, None, :] >= 0)
        b_idx, e_pos, s_pos = torch.nonzero(valid, as_tuple=True)
        e_idx, s_idx = e_of[b_idx, e_pos], s_of[b_idx, s_pos]
        heads = tr.dst[e_idx]
        walks = torch.cat([heads[:, None], walks[s_idx]], dim=1)
        vectors = prod[b_idx, e_pos, s_pos]
        del prod, u, v
    return walks, vectors


# --- pairs and subgraphs without listing walks --------------------------------------------------------------


def _expand(index_of_items: torch.Tensor, queries: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (query q, item k) with items[k] == queries[q]: a join on atom index, vectorised."""
    order = torch.argsort(index_of_items, stable=True)
    sizes = torch.bincount(index_of_items, minlength=n)
    first = torch.cumsum(sizes, 0) - sizes
    counts = sizes[queries]
    q = torch.repeat_interleave(torch.arange(queries.numel()), counts)
    local = torch.arange(q.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return q, order[first[queries[q]] + local]


def restricted_relevance(
    wm: WalkModel, members: torch.Tensor, set_of: torch.Tensor, n_sets: int
) -> torch.Tensor:
    """Relevance of all walks inside each atom set, without listing walks (Xiong et al. 2022).

    ``members`` (m,) atom indices and ``set_of`` (m,) the set each belongs to (an atom may be in several sets,
    once per set). The chain v_{t−1}[c] = Σ_{b in the set} M_t[c←b] v_t[b] runs on every set at once, from
    v_T = R^T restricted to the set; returns Σ over the set of 1ᵀ v_0, (n_sets,).
    """
    n = wm.batch.numbers.shape[0]
    keys_sorted, key_order = torch.sort(set_of * n + members)
    v = wm.top[members]  # (m, F)
    for tr in reversed(wm.transfers):
        e, k = _expand(members, tr.src, n)  # entry e leaves atom members[k]
        target = set_of[k] * n + tr.dst[e]  # ... towards (same set, atom dst[e])
        pos = torch.searchsorted(keys_sorted, target).clamp(max=keys_sorted.numel() - 1)
        inside = keys_sorted[pos] == target
        e, k, kd = e[inside], k[inside], key_order[pos[inside]]
        new = torch.bmm(tr.matrices[e], v[k][:, :, None])[:, :, 0]
        v = torch.zeros_like(v).index_add_(0, kd, new)
    return torch.zeros(n_sets, dtype=v.dtype).index_add_(0, set_of, v.sum(1))
