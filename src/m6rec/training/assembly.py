"""Building history models: from a pretrained checkpoint's item inputs (multitask), and per fine-tuning mode for a
target domain (finetune)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from m6rec.data.dataset import DomainData
from m6rec.model_params import FINETUNE_MODES, MultitaskParams
from m6rec.models.multitask import MultiTaskRecommender
from m6rec.models.pretrained import PretrainedItems, check_domains
from m6rec.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT = "model.pt"
VARIANTS = {  # name -> (pooling, multi-task)
    "attention_mt": ("attention", True),
    "attention_st": ("attention", False),
    "mean_mt": ("mean", True),
    "mean_st": ("mean", False),
}


def load_pretrained(pretrain_dir: str | Path, graph_dir: str | Path) -> PretrainedItems:
    """Read the `pretrain` stage's checkpoint, attach its graph and derive the item inputs
    (:meth:`m6rec.models.lightgcn.TextLightGCN.item_inputs`)."""
    from m6rec.graph.build import load_graph

    model, info = load_checkpoint(Path(pretrain_dir) / CHECKPOINT)
    graph = load_graph(graph_dir)
    meta = info["meta"]
    if list(graph.domains) != list(meta["domains"]):
        raise ValueError(f"graph in {graph_dir} has domains {list(graph.domains)} but the checkpoint in "
                         f"{pretrain_dir} was trained on {meta['domains']}: rerun the graph and pretrain stages")
    model.set_graph(graph.adj).eval()
    items, text_full = model.item_inputs()
    weight = None if model.text_proj is None else model.text_proj.weight.detach().float().numpy().copy()
    base, text = {}, {}
    for d in meta["domains"]:
        off, n = int(meta["item_offsets"][d]), int(meta["n_items"][d])
        base[d] = items[off:off + n].float().numpy().copy()
        text[d] = None if text_full is None else text_full[off:off + n].numpy().copy()
    return PretrainedItems(base=base, text=text, text_weight=weight, text_scale=float(model.alpha[0]),
                           source_domains=tuple(meta.get("source_domains", meta["domains"])),
                           encoder=meta.get("encoder"), encoder_max_seq_length=meta.get("encoder_max_seq_length"))


def with_unseen_domains(items: PretrainedItems, datas: dict[str, DomainData], embeddings_dir: str | Path
                        ) -> PretrainedItems:
    """`items` plus every domain of `datas` the pretraining never saw (inductive fine-tuning): its items are their
    sentence vectors from the `text_embeddings` stage's output, with zero pretrained base vectors (so the target
    model builds them from text alone: ``target_items: text``). A domain without any item text is an error."""
    import dataclasses

    from m6rec.models.textsim import domain_text_vectors
    from m6rec.text.embeddings import load_embeddings

    unseen = [d for d in datas if d not in items.base]
    if not unseen:
        return items
    emb, mask, meta = load_embeddings(embeddings_dir)
    missing = [d for d in unseen if d not in meta["item_offsets"]]
    if missing:
        raise ValueError(f"domains {missing} are neither in the pretrained model nor in the text embeddings of "
                         f"{embeddings_dir}: rerun text_embeddings on the current data")
    base, text = dict(items.base), dict(items.text)
    for d, vecs in domain_text_vectors(emb, meta, unseen).items():
        off, n = int(meta["item_offsets"][d]), int(meta["n_items"][d])
        if n != datas[d].n_items:
            raise ValueError(f"domain '{d}': the text embeddings have {n} items, the data {datas[d].n_items}: rerun "
                             f"text_embeddings on the current data")
        if not mask[off:off + n].any():
            raise ValueError(f"domain '{d}' was not pretrained and has no item text: nothing to build its items "
                             f"from (add it to the pretraining domains, or give its items text)")
        base[d] = np.zeros((n, items.dim), dtype=np.float32)
        text[d] = vecs
    log.info("fine-tuning %s inductively: not pretraining domains, items from their text", unseen)
    return dataclasses.replace(items, base=base, text=text)


def rating_stats(data: DomainData, users: np.ndarray | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of the training ratings of an explicit domain (of `users` only if given); zeros else."""
    if not data.explicit:
        return (0.0, 0.0, 0.0)
    frame = data.frames["train"]
    if users is not None:
        frame = frame[frame["user"].isin(users)]
    values = frame["value"].to_numpy(dtype=np.float64)
    return (float(values.mean()), float(values.min()), float(values.max()))


ARCH_KEYS = ("max_len", "n_interests", "hidden", "use_position", "recency_init", "gate_scale", "temperature")


def architecture(cfg: MultitaskParams) -> dict:
    """Constructor arguments of :class:`MultiTaskRecommender` taken from a params section."""
    return {k: getattr(cfg, k) for k in ARCH_KEYS}


def build_model(items: PretrainedItems, datas: dict[str, DomainData], pooling: str, weights: dict[str, float],
                arch: dict, seed: int, ordered: dict[str, bool] | None = None) -> MultiTaskRecommender:
    """A seeded model over `datas` whose item tables and text projection come from `items` (`arch`: see
    :func:`architecture`). Domains that are not `ordered` get a flat recency prior."""
    check_domains(items, datas)
    torch.manual_seed(seed)
    domains = list(datas)
    model = MultiTaskRecommender(
        domains, [datas[d].n_items for d in domains], [datas[d].explicit for d in domains], dim=items.dim,
        text_dim=items.text_dim, pooling=pooling, task_weights=weights, text_scale=items.text_scale, **arch)
    if items.text_weight is not None:
        with torch.no_grad():
            model.text_proj.weight.copy_(torch.from_numpy(items.text_weight))
    for k, d in enumerate(domains):
        text = items.text[d]
        model.set_items(k, torch.from_numpy(items.base[d]), None if text is None else torch.from_numpy(text),
                        rating_stats(datas[d]))
        if ordered is not None and not ordered.get(d, True):
            model.set_recency(k, 0.0)
    return model


def task_weights(cfg: MultitaskParams, multi: bool) -> dict[str, float]:
    if not multi:
        return {"retrieval": 1.0, "rating": 0.0, "like": 0.0}
    return {"retrieval": cfg.w_retrieval, "rating": cfg.w_rating, "like": cfg.w_like}


def user_subset(data: DomainData, fraction: float, seed: int) -> np.ndarray:
    """A seeded share of the users with >= 2 training interactions (sorted). Subsets of one seed are nested."""
    counts = np.diff(data.train.indptr)
    eligible = np.flatnonzero(counts >= 2)
    order = np.random.default_rng(seed).permutation(eligible)
    n = max(1, int(round(fraction * len(eligible))))
    return np.sort(order[:n])


def target_model(source: MultiTaskRecommender, items: PretrainedItems, data: DomainData, mode: str,
                 target_items: str, residual_std: float, seed: int, users: np.ndarray | None = None
                 ) -> MultiTaskRecommender:
    """A one-domain model for the target, initialised for `mode`, with the trainable parameters set.

    Non-scratch modes load the source's shared weights and start the target's recency adapter at the mean of the
    source domains'; ``scratch`` is a fresh seeded model of the same architecture. Rating statistics come from the
    training `users` (zero-shot: the source's explicit domains' mean, where there is one).
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {list(FINETUNE_MODES)}")
    check_domains(items, {data.name: data})
    scratch = mode == "scratch"
    args = {**source.config(), "domains": [data.name], "n_items": [data.n_items], "explicit": [data.explicit],
            "residual_std": residual_std if scratch else 0.0}
    torch.manual_seed(seed)
    model = MultiTaskRecommender(**args)
    if not scratch:
        model.load_shared(source.shared_state())
        recency = [source.table(k).recency for k in range(len(source.domains))]
        if model.table(0).recency is not None and all(r is not None for r in recency):
            with torch.no_grad():
                model.table(0).recency.copy_(torch.stack([r.detach() for r in recency]).mean(0))
    base = items.base[data.name] if (target_items == "pretrained" and not scratch) else None
    text = items.text[data.name]
    if target_items == "text" and text is None:
        raise ValueError(f"target_items 'text' needs item text vectors, but the pretrained model has none for "
                         f"{data.name}: use target_items 'pretrained' or pretrain with text")
    stats = rating_stats(data, users)
    if mode == "zero_shot" and data.explicit:
        means = [float(source.table(k).rating_stats[0]) for k in range(len(source.domains)) if source.explicit[k]]
        if means:
            stats = (float(np.mean(means)), stats[1], stats[2])
    model.set_items(0, None if base is None else torch.from_numpy(base),
                    None if text is None else torch.from_numpy(text), stats)
    model.set_trainable("full" if scratch else mode)
    return model
