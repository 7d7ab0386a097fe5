"""Epoch schedules of the learning rate and the batch size (``optim.scheduler: step`` / ``batch_growth``).

Smith et al. 2017 ("Don't decay the learning rate, increase the batch size", arXiv 1711.00489): the noise
scale of SGD is about lr · N / B, so dividing the learning rate by a factor at an epoch milestone (``step``)
and multiplying the batch size by the same factor instead (``batch_growth``) train alike, the second with
fewer parameter updates. Where the batch would exceed ``optim.max_batch_size`` the remaining factor divides
the learning rate instead (their hybrid schedule).
"""

from __future__ import annotations

import bisect


def stage(epoch: int, milestones: list[int]) -> int:
    """How many milestones (epochs, 0-based) have been reached at ``epoch``."""
    return bisect.bisect_right(sorted(milestones), epoch)


def batch_and_lr_scale(optim, base_batch: int, epoch: int) -> tuple[int, float]:
    """(batch size, learning-rate multiplier) at ``epoch`` for ``optim`` (an :class:`OptimConfig`)."""
    growth = optim.step_factor ** stage(epoch, optim.milestones)
    if optim.scheduler == "step":
        return base_batch, 1.0 / growth
    if optim.scheduler != "batch_growth":
        return base_batch, 1.0
    batch = base_batch * growth
    cap = optim.max_batch_size
    if cap is not None and batch > cap:
        return max(base_batch, cap), max(base_batch, cap) / batch
    return int(round(batch)), 1.0
