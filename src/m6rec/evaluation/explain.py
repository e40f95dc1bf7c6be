"""Why a history model recommends what it does: the attention of each recommendation on the user's history."""

from __future__ import annotations

import numpy as np
import torch

from m6rec.data.dataset import DomainData
from m6rec.data.sequences import split_histories
from m6rec.evaluation.metrics import topk_items
from m6rec.models.multitask import MultiTaskRecommender


def explain_users(model: MultiTaskRecommender, data: DomainData, n_users: int, top: int, seed: int = 0
                  ) -> list[dict]:
    """For `n_users` seeded test users: the top-`top` recommendations (test protocol: train and valid items
    masked) and, for each, the `top` history items with the largest attention weight."""
    k = model.domain_index(data.name)
    hist = split_histories(data, model.encoder.max_len)["test"]
    lengths = (hist >= 0).sum(1)
    candidates = np.flatnonzero((np.diff(data.test.indptr) > 0) & (lengths >= top))
    if not len(candidates):
        return []
    users = np.sort(np.random.default_rng(seed).choice(candidates, min(n_users, len(candidates)), replace=False))
    titles = data.items["title"].fillna("").astype(str).tolist()
    raw = data.items["raw_item"].astype(str).tolist()
    name = lambda i: titles[i] or raw[i]  # noqa: E731
    scored = model.score(k, torch.from_numpy(hist[users]))
    _, recs = topk_items(scored.scores, top, mask=data.train + data.valid, rows=users)
    out = []
    for row, u in enumerate(users):
        items = []
        for col in range(recs.shape[1]):
            item = int(recs[row, col])
            weights = (scored.gate[row, :, item, None] * scored.weights[row]).sum(0)  # [L], sums to 1
            w_top = torch.topk(weights, min(top, int(lengths[u])))
            because = [{"item": name(int(hist[u, j])), "weight": round(float(w), 3)}
                       for w, j in zip(w_top.values.tolist(), w_top.indices.tolist())]
            items.append({"item": name(item), "score": round(float(scored.scores[row, item]), 4),
                          "because": because, "hit": bool(data.test[u, item] > 0)})
        out.append({"user": int(u), "history_len": int(lengths[u]), "recommendations": items})
    return out


def explanations_markdown(per_domain: dict[str, list[dict]], variant: str) -> str:
    lines = [f"# Why these recommendations ({variant})", "",
             "Top recommendations (test protocol) for a few real users, each with the three history items that "
             "the target attention weights most for it (weights sum to 1 over the user's history; a ✓ marks an "
             "item the user interacted with in the test period).", ""]
    for d, users in per_domain.items():
        lines += [f"## {d}", "", "| user | recommended | because you liked (attention weight) |", "|---|---|---|"]
        for u in users:
            for r in u["recommendations"]:
                because = "; ".join(f"{b['item']} ({b['weight']:.2f})" for b in r["because"])
                mark = " ✓" if r["hit"] else ""
                lines.append(f"| {u['user']} | {r['item']}{mark} | {because} |".replace("\n", " "))
        lines.append("")
    return "\n".join(lines)
