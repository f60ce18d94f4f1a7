"""What every LightningModule of the project shares: the config, Adam with a plateau schedule
stepped once per validation, per-layer boundary statistics, checkpoint extras."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torchmetrics import Metric

from hmrnn.config import Config, from_dict
from hmrnn.core import count_parameters
from hmrnn.core.fixed import FixedBoundaries
from hmrnn.lit.metrics import BoundaryAgreement, BoundaryStats

SPLIT_NAMES = ("train", "val", "test")


def rnn_options(config: Config) -> dict[str, Any]:
    """Keyword options of the recurrent core that ``model.name`` picks."""
    m = config.model
    options: dict[str, Any] = {"layer_norm": m.layer_norm}
    if m.spec.hierarchical:
        options |= {
            "boundary": m.boundary,
            "top_layer_boundary": m.top_layer_boundary,
            "grad_through_ops": m.grad_through_ops,
            "detector_input_grad": m.detector_input_grad,
        }
        if m.z_bias_init:
            options["z_bias_init"] = list(m.z_bias_init)
    return options


def fixed_boundaries(config: Config) -> FixedBoundaries | None:
    """The counters that impose the boundaries of ``model=fixed_boundary``, else None."""
    m = config.model
    if not m.spec.imposed:
        return None
    return FixedBoundaries(m.num_layers, list(m.fixed_periods), m.fixed_source)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The learning rate's factor at optimiser step ``step`` (from 0): (step + 1) / warmup_steps
    up to 1; 1 without a warm-up."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


class LitBase(L.LightningModule):
    """Subclasses build ``self.model`` (with ``.rnn``) in ``__init__`` after calling this one."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = from_dict(Config, config)
        self.num_layers = self.config.model.num_layers
        # keys carry a suffix: nn.Module already has an attribute named "train"
        self.stat_metrics = torch.nn.ModuleDict(
            {f"{s}_": BoundaryStats(self.num_layers) for s in SPLIT_NAMES}
        )
        # per split ("val_", "test_"): agreement with the data's true boundaries, once the
        # subclass names the kinds (set_truth_kinds)
        self.agreement_metrics = torch.nn.ModuleDict()
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None  # restored before the scheduler exists
        self._rate_history: list[list[float]] = []  # validation firing rates (check_stuck)

    @property
    def is_hierarchical(self) -> bool:
        return bool(self.config.model.spec.hierarchical)

    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def stats(self, split: str) -> BoundaryStats:
        return self.stat_metrics[f"{split}_"]  # type: ignore[return-value]

    def set_truth_kinds(self, kinds: list[str]) -> None:
        """Measure validation and test boundaries against these kinds of true boundary."""
        m = self.config.model
        if self.is_hierarchical and kinds:
            detectors = m.num_layers - 1 + int(m.top_layer_boundary)
            for split in ("val", "test"):
                self.agreement_metrics[f"{split}_"] = BoundaryAgreement(detectors, kinds)

    def agreement(self, split: str) -> BoundaryAgreement | None:
        key = f"{split}_"
        if key not in self.agreement_metrics:
            return None
        return self.agreement_metrics[key]  # type: ignore[return-value]

    STUCK_AFTER = 3  # validations in a row

    def check_stuck(self, rates: list[float]) -> list[str]:
        """Warnings for detector layers whose validation firing rate has been 0 or 1 at the last
        ``STUCK_AFTER`` validations (learned boundaries only): such a layer never or always
        closes a segment, so the layer above never updates or is a plain LSTM layer."""
        if self.config.model.spec.imposed:
            return []
        self._rate_history = [*self._rate_history, rates][-self.STUCK_AFTER :]
        if len(self._rate_history) < self.STUCK_AFTER:
            return []
        warnings = []
        m = self.config.model
        for l in range(m.num_layers - 1 + int(m.top_layer_boundary)):
            recent = [r[l] for r in self._rate_history]
            for limit, what in (
                (0.0, "never fires (the layer above never updates)"),
                (1.0, "fires at every step (the layer above is a plain LSTM)"),
            ):
                if all(abs(r - limit) < 1e-3 for r in recent):
                    shown = ", ".join(f"{r:.4f}" for r in recent)
                    warnings.append(
                        f"layer {l + 1}'s boundary detector {what} at the last "
                        f"{self.STUCK_AFTER} validations (rates {shown})"
                    )
        return warnings

    def log_stats(self, split: str, **kwargs: Any) -> None:
        """Log and reset the boundary statistics of a split (HM-LSTM only): rates, operations,
        segment lengths and, for validation and test, agreement with the true boundaries."""
        agreement = self.agreement(split)
        if self.is_hierarchical:
            stats = self.stats(split).compute()
            if (
                split == "val"
                and self.trainer.state.fn == "fit"
                and not self.trainer.sanity_checking
            ):
                rates = [float(stats[f"z_rate_l{l + 1}"]) for l in range(self.num_layers)]
                for warning in self.check_stuck(rates):
                    rank_zero_warn(warning)
            if agreement is not None:
                stats |= agreement.compute()
            self.log_dict({f"{split}/{k}": v for k, v in stats.items()}, **kwargs)
        self.stats(split).reset()
        if agreement is not None:
            agreement.reset()

    def step_plateau(self, loss: float) -> None:
        """One plateau step per validation (lower is better), whatever the cadence."""
        if self.plateau is not None and self.trainer.state.fn == "fit":
            self.plateau.step(loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam; the plateau schedule is stepped by :meth:`step_plateau`, not by Lightning.

        Lightning steps a plateau scheduler by batch or epoch counts, which drift from the
        validation cadence and break a mid-epoch resume; one step per validation does not.
        """
        o = self.config.optim
        optimizer = torch.optim.Adam(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=o.plateau_factor,
            patience=o.plateau_patience,
            min_lr=o.min_lr,
        )
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Adam's step, with ``optim.warmup_steps`` (the learning rate scaled for this step
        only, so the plateau schedule and a resume see the configured one) and
        ``optim.z_lr_scale`` (the z rows' part of the update scaled after the step: exact for
        Adam, whose update is proportional to the learning rate)."""
        o = self.config.optim
        warmup = warmup_factor(self.trainer.global_step, o.warmup_steps)
        rows = []
        if o.z_lr_scale != 1.0 and hasattr(self.model.rnn, "z_rows"):
            rows = [(p, r, p.detach()[r].clone()) for _, p, r in self.model.rnn.z_rows()]
        lrs = [group["lr"] for group in optimizer.param_groups]
        if warmup < 1.0:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * warmup
        try:
            optimizer.step(closure=optimizer_closure)
        finally:
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
        with torch.no_grad():
            for p, r, before in rows:  # before + scale * (after - before)
                p[r].lerp_(before, 1.0 - o.z_lr_scale)

    def window_metrics(self) -> dict[str, Metric]:
        """The training metrics accumulated between two log rows (subclasses add their loss
        metric): saved in checkpoints, so that a resumed run logs the rows it would have."""
        return {"stats": self.stats("train")}

    def training_log_due(self) -> bool:
        """Whether this training batch's metrics reach the loggers: Lightning writes a row when
        the count of batches before this one, plus one, is a multiple of log_every_n_steps."""
        n = self.trainer.log_every_n_steps
        return bool(n) and (self.trainer.global_step + 1) % n == 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.plateau is not None:
            checkpoint["plateau"] = self.plateau.state_dict()
        # sums over every rank (every rank saves: collective); a resume gives them to rank 0
        world = self.trainer.world_size if self._trainer is not None else 1
        checkpoint["train_window"] = {
            name: {
                k: (self.trainer.strategy.reduce(v.clone(), reduce_op="sum") if world > 1 else v)
                .detach()
                .cpu()
                .clone()
                for k, v in metric.metric_state.items()
            }
            for name, metric in self.window_metrics().items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get("plateau")
        metrics = self.window_metrics()
        first = self._trainer is None or self.trainer.global_rank == 0
        for name, states in (checkpoint.get("train_window") or {}).items():
            if name in metrics:
                for key, value in states.items():
                    current = getattr(metrics[name], key)
                    value = value if first else torch.zeros_like(value)  # the sums: once
                    setattr(metrics[name], key, value.to(current.device, current.dtype))

    def log_slope(self) -> None:
        rnn = self.model.rnn
        self.log("slope", rnn.slope if hasattr(rnn, "slope") else torch.tensor(1.0))


def detach_state(state: Any) -> Any:
    return None if state is None else type(state)(*(x.detach() for x in state))
