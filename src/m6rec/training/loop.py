"""One small training loop reused by every gradient-trained model.

A model provides `calculate_loss(batch) -> torch.Tensor` (or the caller passes `loss_fn`, e.g. the DDP loss path of
:mod:`m6rec.training.distributed`). `fit()` runs epochs with a progress bar, one log line per
epoch, periodic validation through a callback, early stopping on that metric, and restores the best weights.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class FitHistory:
    epochs: int = 0
    best_epoch: int = 0
    best_metric: float = float("-inf")
    initial_metric: float | None = None
    losses: list[float] = field(default_factory=list)
    metrics: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_epoch(model: torch.nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                desc: str = "train", progress: bool = True,
                loss_fn: Callable[[object], torch.Tensor] | None = None) -> float:
    """One pass over `batches`; returns the mean loss. `loss_fn` (default `model.calculate_loss`) maps a batch to
    the loss to minimise."""
    loss_fn = loss_fn if loss_fn is not None else model.calculate_loss
    model.train()
    total, n = 0.0, 0
    batches = list(batches) if not hasattr(batches, "__len__") else batches
    for batch in tqdm(batches, desc=desc, leave=False, disable=not progress, mininterval=1.0):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        n += 1
    return total / max(n, 1)


def fit(
    model: torch.nn.Module,
    make_batches: Callable[[int], Iterable],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    validate: Callable[[], float] | None = None,
    eval_every: int = 1,
    patience: int = 3,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    name: str = "model",
    loss_fn: Callable[[object], torch.Tensor] | None = None,
) -> FitHistory:
    """Train for up to `epochs`, validating every `eval_every` epochs; stop after `patience` checks without gain."""
    hist = FitHistory()
    start = time.perf_counter()
    best_state = None
    bad_checks = 0
    if validate is not None:
        hist.initial_metric = float(validate())
        hist.best_metric = hist.initial_metric
        best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, make_batches(epoch), optimizer, desc=f"{name} epoch {epoch}", progress=progress,
                           loss_fn=loss_fn)
        hist.losses.append(loss)
        hist.epochs = epoch
        record = {"loss": loss, "epoch_s": time.perf_counter() - t0}
        if validate is not None and (epoch % eval_every == 0 or epoch == epochs):
            metric = float(validate())
            hist.metrics.append((epoch, metric))
            record["valid_metric"] = metric
            if metric > hist.best_metric:
                hist.best_metric, hist.best_epoch, bad_checks = metric, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_checks += 1
        log.info("%s epoch %d: loss %.4f%s (%.1fs)", name, epoch, loss,
                 f", valid {record['valid_metric']:.4f}" if "valid_metric" in record else "", record["epoch_s"])
        if on_epoch is not None:
            on_epoch(epoch, record)
        if validate is not None and bad_checks >= patience:
            log.info("%s: early stop at epoch %d (best %.4f at epoch %d)", name, epoch, hist.best_metric,
                     hist.best_epoch)
            break
    if best_state is not None and hist.best_epoch > 0:
        model.load_state_dict(best_state)
    elif best_state is not None:
        # Training never beat the initial weights: keep them, and say so.
        model.load_state_dict(best_state)
        log.warning("%s: no epoch improved on the initial validation metric %.4f", name, hist.best_metric)
    hist.seconds = time.perf_counter() - start
    return hist
