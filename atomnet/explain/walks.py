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

import json
from dataclasses import dataclass, field

import numpy as np
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
    """Everything walks need from one recorded forward pass: energies (n_molecules,), the relevance at the last
    block's output R^T (n_atoms, F), the LRP atom relevance and unexplained of the rule, and per block the
    recorded module calls, replayed on demand: :meth:`apply` sends given vectors through a block,
    :attr:`transfers` holds the full matrices M_t (computed once, when first asked for)."""

    batch: AtomsBatch
    energy: torch.Tensor
    top: torch.Tensor
    atom_relevance: torch.Tensor
    unexplained: torch.Tensor
    blocks: list[tuple[list[TapeEntry], int, int]]
    _transfers: dict[int, Transfer] = field(default_factory=dict)
    _structure: dict[int, Transfer] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def apply(self, t: int, vectors: torch.Tensor) -> Transfer:
        """Block ``t`` (0-based) on ``vectors`` (n_atoms, F, K) at its output: entries e with
        ``matrices[e]`` = M[dst_e ← src_e] @ vectors[src_e], (E, F, K)."""
        entries, block_in, block_out = self.blocks[t]
        with torch.no_grad():  # the recorded inputs are marked as carrying relevance; no graph is needed here
            return _replay_block(entries, block_in, block_out, self.batch, vectors)

    def transfer(self, t: int) -> Transfer:
        """Full transfer matrices M_t (E, F, F) of block ``t`` (computed once)."""
        if t not in self._transfers:
            n, feats = self.top.shape
            self._transfers[t] = self.apply(t, torch.eye(feats, dtype=self.top.dtype).expand(n, -1, -1))
        return self._transfers[t]

    @property
    def transfers(self) -> list[Transfer]:
        """Full transfer matrices of every block."""
        return [self.transfer(t) for t in range(self.n_blocks)]

    def structure(self, t: int) -> Transfer:
        """Which (src, dst) entries block ``t`` has (matrices of a cheap one-column replay)."""
        if t in self._transfers:
            return self._transfers[t]
        if t not in self._structure:
            n, feats = self.top.shape
            self._structure[t] = self.apply(t, torch.ones(n, feats, 1, dtype=self.top.dtype))
        return self._structure[t]


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "interactions", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ExplanationError(f"{type(model).__name__} has no interaction blocks (model.interactions)")
    return list(blocks)


def _coalesce(parts: list, n_rows: int):
    """One (src, row, mats) from several parts; entries with the same (src, row) are summed (only where
    there are duplicates: the large matrices are not copied otherwise)."""
    if len(parts) == 1:
        src, row, mats = parts[0][:3]
    else:
        src, row = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        mats = torch.cat([p[2] for p in parts])
    key = src * n_rows + row
    unique, inverse = torch.unique(key, return_inverse=True)
    if unique.numel() == key.numel():
        return src, row, mats
    out = mats.new_zeros((unique.numel(),) + mats.shape[1:]).index_add_(0, inverse, mats)
    return unique // n_rows, unique % n_rows, out


def _dense_jacobian(entry: TapeEntry) -> torch.Tensor:
    """(rows, in, out): the rule's map R_out → R_in of a dense layer, row by row (the rule's own
    ``jacobian`` where it has one, else the rule applied to a basis of R_out)."""
    if hasattr(entry.rule, "jacobian"):
        return entry.rule.jacobian(entry.module, entry.inputs, entry.output)
    return basis_jacobian(entry.rule, entry.module, entry.inputs, entry.output)


def basis_jacobian(rule, module, inputs, out: torch.Tensor) -> torch.Tensor:
    """(rows, in, out): ``rule.relevance`` applied to every basis vector of R_out at once."""
    basis = torch.eye(out.shape[-1], dtype=out.dtype, device=out.device)[:, None, :].expand(-1, *out.shape)
    (r_in,) = rule.relevance(module, inputs, out, basis)
    return r_in.permute(1, 2, 0)


def _rowwise_matmul(jac: torch.Tensor, row: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """jac[row[e]] @ mats[e] for every entry e, (E, in, K), without copying a Jacobian per entry: entries are
    grouped by row and each row's Jacobian multiplies all of its entries in one product."""
    n_rows, f_in, f_out = jac.shape
    k = mats.shape[2]
    if row.numel() == 0 or n_rows == 0:
        return mats.new_zeros(row.numel(), f_in, k)
    slot, _, e_max = _grouped(row, n_rows)
    pad = mats.new_zeros(n_rows, max(e_max, 1), f_out, k).index_put_((row, slot), mats)
    res = torch.bmm(jac, pad.permute(0, 2, 1, 3).reshape(n_rows, f_out, -1))
    return res.view(n_rows, f_in, -1, k).permute(0, 2, 1, 3)[row, slot]


def _replay_block(
    entries: list[TapeEntry], block_in: int, block_out: int, batch: AtomsBatch, start: torch.Tensor
) -> Transfer:
    """Run a block's rules backwards on (source atom, row) → (F_row, K) entries, from ``start`` (n, F, K) at
    the block's output (the identity gives the transfer matrices) to its input."""
    n = batch.numbers.shape[0]
    states: dict[int, list] = {block_out: [(torch.arange(n), torch.arange(n), start, n)]}
    for entry in reversed(entries):
        parts = states.pop(entry.out_id, None)
        if parts is None:
            continue
        n_rows = parts[0][3]
        src, row, mats = _coalesce(parts, n_rows)
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
            jac = entry.cache.get("jacobian")
            if jac is None:
                jac = entry.cache["jacobian"] = _dense_jacobian(entry)  # (rows, in, out)
            results.append((entry.in_ids[0], src, row, _rowwise_matmul(jac, row, mats), n_rows))
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
    src, dst, mats = _coalesce(parts, n)
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
    if marks and marks[0][2] != id(leaf):
        raise ExplanationError("walks: the first interaction block does not take the embedding as its input")
    unexplained = sum(state.absorbed.values(), torch.zeros_like(energy))
    blocks = [(tape[s:e], i, o) for s, e, i, o in marks]
    return WalkModel(
        batch, energy.detach(), top.detach(), grad0.sum(1).detach(), unexplained.detach(), blocks
    )


# --- walk enumeration -------------------------------------------------------------------------------------


def walk_counts(wm: WalkModel) -> int:
    """Number of walks, by dynamic programming on counts (nothing is enumerated)."""
    n = wm.batch.numbers.shape[0]
    count = torch.ones(n, dtype=torch.float64)
    for t in reversed(range(wm.n_blocks)):
        tr = wm.structure(t)
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


def _columns(index: torch.Tensor, vectors: torch.Tensor, n: int):
    """Vectors (m, F) laid out as columns per atom ``index``: (n, F, K) with K the largest group, and each
    vector's column."""
    slot, _, k_max = _grouped(index, n)
    cols = vectors.new_zeros(n, max(k_max, 1), vectors.shape[1]).index_put_((index, slot), vectors)
    return cols.transpose(1, 2), slot


def enumerate_walks(wm: WalkModel, max_memory_gb: float = MAX_MEMORY_GB) -> tuple[torch.Tensor, torch.Tensor]:
    """All walks (W, T+1) (atom indices, i₀ first) and their relevances (W,), by DP over shared suffixes:
    the suffix vectors at each head atom go through a block together (as columns); past F columns the block's
    full matrices are cheaper and used instead."""
    n = wm.batch.numbers.shape[0]
    n_walks = walk_counts(wm)
    feats = wm.top.shape[1]
    need = n_walks * (8 * (wm.n_blocks + 2)) + 3 * n_walks * 8
    if need > max_memory_gb * 2**30:
        raise ExplanationError(
            f"{n_walks:,} walks need about {need / 2**30:.1f} GB (> {max_memory_gb} GB): use top_k=K, "
            "pair_relevance or subgraph_relevance, which do not list every walk, or raise max_memory_gb"
        )
    heads = torch.arange(n)
    walks = heads[:, None]
    vectors = wm.top  # suffix vectors at their head atom
    for t in reversed(range(wm.n_blocks)):
        last = t == 0
        cols, slot = _columns(heads, vectors, n)
        if cols.shape[2] <= feats:
            tr = wm.apply(t, cols)  # (E, F, K): M_e @ (suffix vectors at src_e)
            src, dst, out = tr.src, tr.dst, tr.matrices
            if last:
                out = out.sum(1)  # 1ᵀ M_e v
        else:
            tr = wm.transfer(t)
            src, dst = tr.src, tr.dst
            e_slot, _, e_max = _grouped(src, n)
            if last:
                u = tr.matrices.new_zeros(n, e_max, feats).index_put_((src, e_slot), tr.matrices.sum(1))
                out = torch.bmm(u, cols)[src, e_slot]  # (E, K)
            else:
                out = torch.bmm(tr.matrices, cols[src])
        e_idx, s_idx = _expand(heads, src, n)  # entry e with every suffix whose head is its source
        vectors = out[e_idx, slot[s_idx]] if last else out[e_idx, :, slot[s_idx]]
        heads = dst[e_idx]
        walks = torch.cat([heads[:, None], walks[s_idx]], dim=1)
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
    v_T = R^T restricted to the set (each atom's memberships go through a block together, as columns);
    returns Σ over the set of 1ᵀ v_0, (n_sets,).
    """
    n = wm.batch.numbers.shape[0]
    keys_sorted, key_order = torch.sort(set_of * n + members)
    v = wm.top[members]  # (m, F)
    for t in reversed(range(wm.n_blocks)):
        cols, slot = _columns(members, v, n)
        tr = wm.apply(t, cols)
        e, k = _expand(members, tr.src, n)  # entry e leaves atom members[k]
        target = set_of[k] * n + tr.dst[e]  # ... towards (same set, atom dst[e])
        pos = torch.searchsorted(keys_sorted, target).clamp(max=keys_sorted.numel() - 1)
        inside = keys_sorted[pos] == target
        e, k, kd = e[inside], k[inside], key_order[pos[inside]]
        v = torch.zeros_like(v).index_add_(0, kd, tr.matrices[e, :, slot[k]])
    return torch.zeros(n_sets, dtype=v.dtype).index_add_(0, set_of, v.sum(1))


# --- the K most relevant walks without listing all of them -------------------------------------------------


def _prefixes(wm: WalkModel, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All prefixes i₀ … i_m (P, m+1) and their row vectors p = 1ᵀ M_1[i₀←i₁] ⋯ M_m[i_{m−1}←i_m] (P, F)."""
    n, feats = wm.batch.numbers.shape[0], wm.top.shape[1]
    walks = torch.arange(n)[:, None]
    vecs = torch.ones(n, feats, dtype=wm.top.dtype)
    for tr in (wm.transfer(t) for t in range(m)):
        cols, slot = _columns(walks[:, -1], vecs, n)  # (n, F, S): the prefixes ending at each atom
        out = torch.bmm(cols[tr.dst].transpose(1, 2), tr.matrices)  # (E, S, F): p · M_e
        e, p = _expand(walks[:, -1], tr.dst, n)  # entry e continues every prefix p ending at dst[e]
        vecs = out[e, slot[p]]
        walks = torch.cat([walks[p], tr.src[e][:, None]], dim=1)
    return walks, vecs


def _suffix_step(tr: Transfer, heads, walks, vecs, n):
    """Suffixes one block further down: (new heads, walks, vectors) for every entry leaving each head."""
    cols, slot = _columns(heads, vecs, n)  # (n, F, S): the suffix vectors at each head atom
    out = torch.bmm(tr.matrices, cols[tr.src])  # (E, F, S): M_e @ v
    s, e = _expand(tr.src, heads, n)
    return tr.dst[e], torch.cat([tr.dst[e][:, None], walks[s]], dim=1), out[e, :, slot[s]]


def _prefix_bounds(wm: WalkModel, m: int, prefix_walks, prefix_vecs) -> list[torch.Tensor]:
    """bound[τ][a] ≥ ‖p‖ for every prefix ending at atom a at level τ ≥ m: exact at m, then
    max_c bound[τ−1][c] · √(‖M_τ[c←a]‖₁ ‖M_τ[c←a]‖_∞) (≥ the operator norm ‖M‖₂)."""
    n = wm.batch.numbers.shape[0]
    norms = torch.linalg.vector_norm(prefix_vecs, dim=1)
    bound = torch.zeros(n, dtype=norms.dtype).scatter_reduce_(0, prefix_walks[:, -1], norms, "amax")
    bounds = [None] * m + [bound]
    for tr in (wm.transfer(t) for t in range(m, wm.n_blocks)):
        a = tr.matrices.abs()  # ‖M‖₂ ≤ √(‖M‖₁ ‖M‖_∞): an upper bound without an SVD
        op = (a.sum(1).amax(1) * a.sum(2).amax(1)).sqrt()
        bound = torch.zeros(n, dtype=norms.dtype).scatter_reduce_(0, tr.src, bound[tr.dst] * op, "amax")
        bounds.append(bound)
    return bounds


def top_walks(wm: WalkModel, k: int, max_memory_gb: float = MAX_MEMORY_GB, beam: int = 2048):
    """The ``k`` walks of largest |relevance| (walks (k, T+1), relevances (k,)), exact, without listing all.

    Walk relevance = p · q with p a prefix vector at a middle level m (all prefixes enumerated) and q a suffix
    vector (built from the top). A beam search over suffixes finds k real walks, whose k-th |relevance| θ is a
    lower bound of the answer; then every suffix whose Cauchy–Schwarz bound ‖q‖ · max‖p‖ (max over the
    prefixes that can precede it) is below θ is dropped, and the survivors meet the prefixes exactly.
    """
    n, T = wm.batch.numbers.shape[0], wm.n_blocks
    budget = max_memory_gb * 2**30
    feats = wm.top.shape[1]
    m = 0
    while m < T and walk_prefix_count(wm, m + 1) * feats * 8 * 3 < min(budget, 2**28):
        m += 1
    pw, pv = _prefixes(wm, m)
    bounds = _prefix_bounds(wm, m, pw, pv)

    def suffixes(theta: float | None):
        heads, walks, vecs = torch.arange(n), torch.arange(n)[:, None], wm.top
        for tau in range(T, m, -1):
            heads, walks, vecs = _suffix_step(wm.transfer(tau - 1), heads, walks, vecs, n)
            score = torch.linalg.vector_norm(vecs, dim=1) * bounds[tau - 1][heads]
            if theta is None:  # beam: the most promising suffixes only
                keep = torch.topk(score, min(beam, score.numel())).indices
            else:
                keep = torch.nonzero(score >= theta).flatten()
            heads, walks, vecs = heads[keep], walks[keep], vecs[keep]
            if walks.numel() * 8 + vecs.numel() * 8 > budget:
                raise ExplanationError(
                    f"top_k={k}: {heads.numel():,} candidate suffixes at block {tau} exceed {max_memory_gb} GB; "
                    "raise max_memory_gb or use pair_relevance"
                )
        return heads, walks, vecs

    def meet(heads, walks, vecs):
        # every (prefix ending at a, suffix starting at a): relevance p · q, keep the k largest |.|
        p_cols, p_slot = _columns(pw[:, -1], pv, n)  # (n, F, P)
        q_cols, q_slot = _columns(heads, vecs, n)  # (n, F, Q)
        p_of = torch.full((n, p_cols.shape[2]), -1, dtype=torch.long).index_put_(
            (pw[:, -1], p_slot), torch.arange(len(pw))
        )
        q_of = torch.full((n, q_cols.shape[2]), -1, dtype=torch.long).index_put_(
            (heads, q_slot), torch.arange(len(heads))
        )
        best_r, best_p, best_q = [], [], []
        rows = max(1, int(2**25 // max(n * q_cols.shape[2], 1)))  # bound the (n, rows, Q) block
        for start in range(0, p_cols.shape[2], rows):
            rel = torch.bmm(p_cols[:, :, start : start + rows].transpose(1, 2), q_cols)  # (n, rows, Q)
            valid = (p_of[:, start : start + rows, None] >= 0) & (q_of[:, None, :] >= 0)
            score = torch.where(valid, rel.abs(), torch.full_like(rel, -1.0)).flatten()
            top = torch.topk(score, min(k, int(valid.sum()))).indices
            a, pr, qr = torch.unravel_index(top, rel.shape)
            best_r.append(rel[a, pr, qr])
            best_p.append(p_of[a, start + pr])
            best_q.append(q_of[a, qr])
        r, pi, qi = torch.cat(best_r), torch.cat(best_p), torch.cat(best_q)
        top = torch.topk(r.abs(), min(k, r.numel())).indices
        return torch.cat([pw[pi[top]], walks[qi[top]][:, 1:]], dim=1), r[top]

    _, r0 = meet(*suffixes(None))
    theta = float(r0.abs().min()) if r0.numel() >= k else 0.0
    return meet(*suffixes(theta))


def walk_prefix_count(wm: WalkModel, m: int) -> int:
    """Number of prefixes i₀ … i_m (walks through the first m blocks)."""
    n = wm.batch.numbers.shape[0]
    count = torch.ones(n, dtype=torch.float64)
    for tr in (wm.structure(t) for t in range(m)):
        count = torch.zeros(n, dtype=torch.float64).index_add_(0, tr.src, count[tr.dst])
    return int(count.sum().item())


# --- public interface --------------------------------------------------------------------------------------


@dataclass
class WalkExplanation:
    """Relevant walks of one molecule's energy.

    Attributes:
        walks: (n_walks, T+1) atom indices in input order; column 0 is the input atom i₀, column T the atom
            whose energy is read out.
        relevance: (n_walks,) eV. All walks (``complete``): Σ = energy − unexplained; Σ over walks with
            i₀ = i is the LRP relevance of atom i. With ``top_k``: the K largest |relevance|, sorted.
        energy, unexplained: eV (LRP of the same rule). rule, params: the LRP rule used.
        atom_relevance: (n_atoms,) eV, the LRP atom relevance of the same rule.
        numbers, positions: the molecule (Å).
    """

    walks: np.ndarray
    relevance: np.ndarray
    energy: float
    unexplained: float
    rule: str
    params: dict
    atom_relevance: np.ndarray
    numbers: np.ndarray
    positions: np.ndarray
    complete: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "params": dict(self.params),
            "energy": float(self.energy),
            "unexplained": float(self.unexplained),
            "complete": self.complete,
            "walks": self.walks.astype(int).tolist(),
            "relevance": self.relevance.astype(float).tolist(),
            "atom_relevance": self.atom_relevance.astype(float).tolist(),
            "numbers": self.numbers.astype(int).tolist(),
            "positions": self.positions.astype(float).tolist(),
            **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.extra.items()},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def walk_model(
    potential, atoms, rule: str = "lrp-gamma", dtype: torch.dtype | None = torch.float64, **params
):
    """(WalkModel, resolved params) of one structure (an ``ase.Atoms`` or a one-molecule AtomsBatch)."""
    from atomnet.explain.analyzer import as_batch, as_potential

    pot = as_potential(potential, dtype)
    batch = as_batch(atoms, pot)
    if batch.n_molecules != 1:
        raise ExplanationError(f"walks explain one structure at a time, got {batch.n_molecules}")
    method = get_method(rule)
    resolved = method.resolve(params)
    return transfer_matrices(pot.model, batch, rule, **resolved), resolved


def walks(
    potential,
    atoms,
    rule: str = "lrp-gamma",
    top_k: int | None = None,
    max_memory_gb: float = MAX_MEMORY_GB,
    dtype: torch.dtype | None = torch.float64,
    **params,
) -> WalkExplanation:
    """Relevance of every walk i₀ → … → i_T (or the ``top_k`` most relevant) under an LRP ``rule``.

    ``potential``: as in :func:`atomnet.explain.create_analyzer`; ``atoms``: one structure. Computed in
    float64 by default (``dtype=None``: the model's own). Memory is estimated before enumeration; past
    ``max_memory_gb`` a one-line error suggests ``top_k`` or :func:`pair_relevance`.
    """
    wm, resolved = walk_model(potential, atoms, rule, dtype, **params)
    return _explanation(wm, rule, resolved, top_k, max_memory_gb)


def _explanation(wm: WalkModel, rule, params, top_k, max_memory_gb) -> WalkExplanation:
    if top_k is not None:
        if int(top_k) < 1:
            raise ExplanationError(f"top_k must be >= 1, got {top_k}")
        w, r = top_walks(wm, int(top_k), max_memory_gb)
        order = torch.argsort(r.abs(), descending=True)
        w, r = w[order], r[order]
    else:
        w, r = enumerate_walks(wm, max_memory_gb)
    b = wm.batch
    return WalkExplanation(
        walks=w.numpy(),
        relevance=r.detach().double().numpy(),
        energy=float(wm.energy[0]),
        unexplained=float(wm.unexplained[0]),
        rule=rule,
        params=dict(params),
        atom_relevance=wm.atom_relevance.double().numpy(),
        numbers=b.numbers.numpy(),
        positions=b.positions.detach().double().numpy(),
        complete=top_k is None,
    )


def _pairs_from(wm: WalkModel) -> np.ndarray:
    n = wm.batch.numbers.shape[0]
    atoms = torch.arange(n)
    single = restricted_relevance(wm, atoms, atoms, n)
    # neighbour pairs i < j (only they can hold walks visiting exactly {i, j})
    tr = wm.structure(0)
    pairs = torch.unique(
        torch.stack([torch.minimum(tr.src, tr.dst), torch.maximum(tr.src, tr.dst)], 1), dim=0
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    for t in (wm.structure(k) for k in range(1, wm.n_blocks)):
        more = torch.stack([torch.minimum(t.src, t.dst), torch.maximum(t.src, t.dst)], 1)
        pairs = torch.unique(torch.cat([pairs, more[more[:, 0] != more[:, 1]]]), dim=0)
    out = np.diag(single.double().numpy())
    if pairs.numel():
        p = pairs.shape[0]
        both = restricted_relevance(wm, pairs.flatten(), torch.arange(p).repeat_interleave(2), p)
        exact = (both - single[pairs[:, 0]] - single[pairs[:, 1]]).double().numpy()
        i, j = pairs[:, 0].numpy(), pairs[:, 1].numpy()
        out[i, j] = exact / 2
        out[j, i] = exact / 2
    return out


def pair_relevance(potential, atoms, rule: str = "lrp-gamma", dtype=torch.float64, **params) -> np.ndarray:
    """(n_atoms, n_atoms) eV: off the diagonal, half the relevance of all walks whose visited atoms are
    exactly {i, j} (so the matrix sums to the 1- plus 2-body relevance); on the diagonal, walks that stay on
    atom i. No walk list: S({i, j}) − S({i}) − S({j}) with S the relevance of walks inside a set."""
    wm, _ = walk_model(potential, atoms, rule, dtype, **params)
    return _pairs_from(wm)


def subgraph_relevance(
    potential, atoms, atom_set, rule: str = "lrp-gamma", dtype=torch.float64, **params
) -> float:
    """Relevance (eV) of all walks that stay inside ``atom_set`` (atom indices), in one restricted pass."""
    wm, _ = walk_model(potential, atoms, rule, dtype, **params)
    n = wm.batch.numbers.shape[0]
    members = torch.as_tensor(sorted({int(a) for a in atom_set}), dtype=torch.long)
    if members.numel() == 0 or int(members.min()) < 0 or int(members.max()) >= n:
        raise ExplanationError(f"atom_set must name atoms 0..{n - 1}, got {sorted(atom_set)}")
    return float(restricted_relevance(wm, members, torch.zeros_like(members), 1)[0])


def body_orders(walk_list: np.ndarray, relevance: np.ndarray, max_order: int) -> np.ndarray:
    """Relevance by number of distinct atoms visited: entry k−1 holds the k-body walks, k = 1 … max_order."""
    ordered = np.sort(walk_list, axis=1)
    distinct = 1 + (np.diff(ordered, axis=1) != 0).sum(1)
    return np.bincount(distinct - 1, weights=relevance, minlength=max_order)[:max_order]


def body_order_relevance(
    potential,
    atoms,
    rule: str = "lrp-gamma",
    max_memory_gb: float = MAX_MEMORY_GB,
    dtype=torch.float64,
    **params,
) -> np.ndarray:
    """(T+1,) eV: relevance of the 1-, 2-, …, (T+1)-body walks; sums to the total walk relevance. Needs the
    walk list (memory-checked)."""
    e = walks(potential, atoms, rule, max_memory_gb=max_memory_gb, dtype=dtype, **params)
    return body_orders(e.walks, e.relevance, e.walks.shape[1])
