"""The LightningModule: loss, metrics and optimisers around a plain :class:`~atomnet.potential.Potential`.

loss = w_E · MSE(E) + w_F · MSE(F) with E in eV (n_molecules,) and F in eV/Å (n_atoms, 3); forces come from
the one path :func:`atomnet.potential.energy_and_forces` (``create_graph=True`` while training).
Per epoch it logs MAE and RMSE of the energy (eV, total and per atom) and of the force components (eV/Å)
for train and val. Validation needs gradients for forces: the Trainer runs with ``inference_mode=False``
and :func:`energy_and_forces` enables grad itself.
"""

from __future__ import annotations

import copy
import math

import pytorch_lightning as pl
import torch

from atomnet import keys
from atomnet.data.batch import AtomsBatch
from atomnet.errors import AtomNetError
from atomnet.loading import CHECKPOINT_KEY, CHECKPOINT_VERSION
from atomnet.potential import Potential
from atomnet.training.config import Config
from atomnet.training.datamodule import INDEX

CHECKPOINT_FORMAT = "atomnet-lightning"


class NonFiniteLossError(AtomNetError, FloatingPointError):
    """The loss became NaN/inf; the message names the epoch, batch and molecules."""


class ErrorMeter:
    """Running sums for MAE/RMSE of energy (total, per atom) and force components."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, list[float]] = {}

    def add(self, name: str, err: torch.Tensor) -> None:
        err = err.detach().double().reshape(-1)
        s = self.sums.setdefault(name, [0.0, 0.0, 0])
        s[0] += float(err.abs().sum())
        s[1] += float((err**2).sum())
        s[2] += err.numel()

    def update(self, out: dict, batch: AtomsBatch, properties: tuple[str, ...] = ()) -> None:
        de = out[keys.ENERGY] - batch.targets[keys.ENERGY]
        self.add("energy", de)
        self.add("energy_per_atom", de / batch.n_atoms.to(de.dtype))
        if keys.FORCES in out and keys.FORCES in batch.targets:
            self.add("forces", out[keys.FORCES] - batch.targets[keys.FORCES])
        for name in properties:
            self.add(name, out[name] - batch.targets[name])

    def synchronize(self) -> None:
        """Sum the running sums over the processes of a distributed run (every process calls it), so every
        process reports the metrics of all molecules, each counted once."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        names: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(names, sorted(self.sums))
        union = sorted(set().union(*names))
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([self.sums.get(k, [0.0, 0.0, 0]) for k in union], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        self.sums = {k: [float(a), float(q), int(n)] for k, (a, q, n) in zip(union, t.tolist(), strict=True)}

    def mse(self, name: str) -> float:
        a, q, n = self.sums.get(name, (0.0, 0.0, 0))
        return q / n if n else 0.0

    def compute(self, prefix: str) -> dict[str, float]:
        res = {}
        for name, (a, q, n) in self.sums.items():
            if n:
                res[f"{prefix}_{name}_mae"] = a / n
                res[f"{prefix}_{name}_rmse"] = math.sqrt(q / n)
        return res


def fused_adam(params: list[torch.Tensor]) -> bool:
    """Whether Adam/AdamW may run as torch's fused kernel (one pass over each parameter instead of the
    foreach path's dozen): every parameter a dense float32/float64 tensor on CPU, or CUDA. The update is the
    same Adam formula; it pays most where the optimiser step is a large part of a training step (CMNet's 1M
    first-layer weights)."""
    return bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) and not p.is_sparse
        for p in params
    )


def _weight(weights: dict[str, float], name: str) -> float:
    """``optim.target_weights`` entry of ``name`` (matched case-insensitively), default 1."""
    for key, value in weights.items():
        if key.lower() == name.lower():
            return float(value)
    return 1.0


class PotentialModule(pl.LightningModule):
    """Wraps ``potential`` for training with the options of ``cfg.optim``.

    With ``optim.ema_decay`` an exponential moving average of the weights (``self.ema``) is kept; it is used
    for validation, testing and export.
    """

    def __init__(self, potential: Potential, cfg: Config, spreads: dict[str, float] | None = None):
        super().__init__()
        self.potential = potential
        self.cfg = cfg
        #: extra targets and the weight of each one's MSE in the loss: energy_weight · w_p · (σ_E / σ_p)²
        self.properties = tuple(potential.model.properties)
        spreads = spreads or {}
        primary = cfg.data.targets[0] if cfg.data.targets else None
        self.property_weights = {
            p: cfg.optim.energy_weight
            * _weight(cfg.optim.target_weights, p)
            * (spreads.get(primary, 1.0) / spreads.get(p, 1.0)) ** 2
            for p in self.properties
        }
        self.ema: Potential | None = None
        if cfg.optim.ema_decay is not None:
            self.ema = copy.deepcopy(potential)
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.train_meter, self.val_meter = ErrorMeter(), ErrorMeter()

    # --- evaluation helpers --------------------------------------------------------------------
    @property
    def use_forces(self) -> bool:
        return self.cfg.optim.forces_weight > 0

    @property
    def eval_potential(self) -> Potential:
        """The weights used for validation and export (EMA if enabled)."""
        return self.ema if self.ema is not None else self.potential

    def loss(self, out: dict, batch: AtomsBatch) -> torch.Tensor:
        o = self.cfg.optim
        loss = o.energy_weight * torch.mean((out[keys.ENERGY] - batch.targets[keys.ENERGY]) ** 2)
        if self.use_forces:
            loss = loss + o.forces_weight * torch.mean((out[keys.FORCES] - batch.targets[keys.FORCES]) ** 2)
        for name, w in self.property_weights.items():
            loss = loss + w * torch.mean((out[name] - batch.targets[name]) ** 2)
        return loss

    def transfer_batch_to_device(self, batch: AtomsBatch, device: torch.device, dataloader_idx: int):
        return batch.to(device)

    # --- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: AtomsBatch, batch_idx: int) -> torch.Tensor:
        out = self.potential(batch, forces=self.use_forces, create_graph=self.use_forces)
        loss = self.loss(out, batch)
        if not torch.isfinite(loss):
            idx = batch.targets.get(INDEX)
            mols = idx.tolist() if idx is not None else "unknown"
            raise NonFiniteLossError(
                f"training loss is {float(loss.detach())} at epoch {self.current_epoch}, batch {batch_idx} "
                f"(global step {self.global_step}); store indices of the batch's molecules: {mols}. "
                "Check these molecules' energies/forces, or lower optim.lr"
            )
        self.train_meter.update(out, batch, self.properties)
        n = batch.n_molecules
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            d = self.cfg.optim.ema_decay
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.potential.parameters(), strict=True):
                    pe.lerp_(p, 1.0 - d)
                for be, b in zip(self.ema.buffers(), self.potential.buffers(), strict=True):
                    be.copy_(b)

    def meter_loss(self, meter: ErrorMeter) -> float:
        """The loss of :meth:`loss` over everything ``meter`` saw: mean squared errors over all molecules and
        force components (not a mean of batch losses), identical for any batching or process count."""
        o = self.cfg.optim
        loss = o.energy_weight * meter.mse("energy")
        if self.use_forces:
            loss += o.forces_weight * meter.mse("forces")
        for name, w in self.property_weights.items():
            loss += w * meter.mse(name)
        return loss

    def _eval_step(self, batch: AtomsBatch, meter: ErrorMeter) -> None:
        pot = self.eval_potential
        out = pot(batch, forces=self.use_forces or keys.FORCES in batch.targets, create_graph=False)
        meter.update(out, batch, self.properties)

    def _eval_epoch_end(self, prefix: str) -> None:
        self.val_meter.synchronize()
        self.log(f"{prefix}_loss", self.meter_loss(self.val_meter), prog_bar=True)
        for k, v in self.val_meter.compute(prefix).items():
            self.log(k, v, prog_bar=k in (f"{prefix}_energy_mae", f"{prefix}_forces_mae"))

    def validation_step(self, batch: AtomsBatch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_meter)

    def test_step(self, batch: AtomsBatch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_meter)

    def on_train_epoch_start(self) -> None:
        self.train_meter.reset()
        # the learning rate this epoch runs with (epoch schedulers step before on_train_epoch_end)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self.train_meter.synchronize()
        self.log_dict(self.train_meter.compute("train"))

    def on_validation_epoch_start(self) -> None:
        self.val_meter.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.val_meter.reset()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        trainable = [p for p in self.potential.parameters() if p.requires_grad]  # model.freeze: the others
        opt = cls(trainable, lr=o.lr, weight_decay=o.weight_decay, fused=fused_adam(trainable))
        if o.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=o.plateau_factor, patience=o.plateau_patience, min_lr=o.min_lr
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        if o.scheduler == "cosine":
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            warm, floor = o.warmup_steps, o.min_lr / o.lr

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                t = min((step - warm) / max(total - warm, 1), 1.0)
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if o.scheduler in ("step", "batch_growth"):  # per epoch; batch_growth: lr only beyond max_batch_size
            from atomnet.training.schedules import batch_and_lr_scale

            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda epoch: batch_and_lr_scale(o, self.cfg.data.batch_size, epoch)[1]
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        o = self.cfg.optim
        if o.warmup_steps and o.scheduler != "cosine" and self.global_step < o.warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] = o.lr * (self.global_step + 1) / o.warmup_steps
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    # --- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store what :func:`atomnet.load_model` needs to rebuild the model without unpickling code."""
        model = self.potential.model
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": model.name,
            "hparams": dict(model.hparams),
            "weights": "ema.model." if self.ema is not None else "potential.model.",
            "config": self.cfg.to_dict(),
        }
