"""Per-domain item inputs taken from a pretrained model, in the layout the history model takes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m6rec.data.dataset import DomainData


@dataclass(frozen=True)
class PretrainedItems:
    """Per-domain item inputs derived from a pretrained model, in the layout :class:`MultiTaskRecommender` takes.

    ``base[d]``: the pretrained (propagated) item vector minus the item's own text term ``text_scale * W t_i``;
    ``text[d]``: sentence vectors (zero rows for items without text; None without text); ``text_weight``: ``W``
    ``[dim, text_dim]`` (None: the model's own initialisation).
    """

    base: dict[str, np.ndarray]
    text: dict[str, np.ndarray | None]
    text_weight: np.ndarray | None
    text_scale: float
    source_domains: tuple[str, ...]
    encoder: str | None = None
    encoder_max_seq_length: int | None = None

    @property
    def dim(self) -> int:
        return int(next(iter(self.base.values())).shape[1])

    @property
    def text_dim(self) -> int:
        if self.text_weight is not None:
            return int(self.text_weight.shape[1])
        return next((int(t.shape[1]) for t in self.text.values() if t is not None), 0)


def check_domains(items: PretrainedItems, datas: dict[str, DomainData]) -> None:
    """Catalogue sizes of the data must match the pretrained id space."""
    for d, data in datas.items():
        if d not in items.base:
            raise ValueError(f"domain '{d}' is not in the pretrained model (it has {sorted(items.base)})")
        if items.base[d].shape[0] != data.n_items:
            raise ValueError(f"domain '{d}': the pretrained model has {items.base[d].shape[0]} items, the data "
                             f"{data.n_items}: rerun the pretraining on the current data")
