"""Training-free text scores on each domain, valid and test NDCG@10 (full ranking): the plain mean-cosine baseline
(``mean``) against catalogue centring, recency decay, the last item alone and soft-max kernels. Needs the
pipeline's data/validated and data/embeddings (``make run``); writes bench/results/text_kernels.json.

    M6REC_THREADS=1 PYTHONPATH=src python bench/bench_text_kernels.py . amazon-office amazon-scientific ml-100k
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from m6rec.data.dataset import domain_data, load_prepared
from m6rec.data.sequences import split_histories
from m6rec.evaluation.protocol import evaluate_split
from m6rec.models.textsim import domain_text_vectors
from m6rec.text.embeddings import load_embeddings

root = sys.argv[1]
doms = sys.argv[2:] or ["amazon-office", "amazon-scientific", "ml-100k", "ml-latest-small", "lastfm-hetrec2011"]
prepared = load_prepared(f"{root}/data/validated")
emb, mask, meta = load_embeddings(f"{root}/data/embeddings")
text = domain_text_vectors(emb, meta, doms)
L = 50

def table(t, center=False, whiten=0):
    t = torch.from_numpy(t).float()
    t = F.normalize(t, dim=-1)
    if center or whiten:
        t = t - t.mean(0, keepdim=True)
    if whiten:
        u, s, v = torch.pca_lowrank(t, q=min(whiten, t.shape[1]), center=False)
        t = (t @ v) / s.clamp(min=1e-6) * s.mean()
    return F.normalize(t, dim=-1)

def pooled(tab, hist, decay):
    h = torch.from_numpy(hist)
    w = torch.tensor([decay ** (h.shape[1] - 1 - j) for j in range(h.shape[1])]) * (h >= 0)
    return F.normalize((w.unsqueeze(-1) * tab[h.clamp(min=0)]).sum(1), dim=-1)

def kernel(tab, hist, tau, decay=1.0):
    h = torch.from_numpy(hist)
    valid = h >= 0
    w = torch.tensor([decay ** (h.shape[1] - 1 - j) for j in range(h.shape[1])]) * valid
    lw = torch.log(w / w.sum(1, keepdim=True).clamp(min=1e-9)).unsqueeze(-1)
    return tau * torch.logsumexp(tab[h.clamp(min=0)] @ tab.T / tau + lw, dim=1)

res = {}
for d in doms:
    data = domain_data(prepared, d)
    hs = split_histories(data, L)
    base = table(text[d]); cen = table(text[d], center=True)
    variants = {
        "mean": lambda hist: pooled(base, hist, 1.0) @ base.T,
        "mean_center": lambda hist: pooled(cen, hist, 1.0) @ cen.T,
        "decay.9": lambda hist: pooled(base, hist, .9) @ base.T,
        "decay.7_center": lambda hist: pooled(cen, hist, .7) @ cen.T,
        "decay.9_center": lambda hist: pooled(cen, hist, .9) @ cen.T,
        "last_center": lambda hist: pooled(cen, hist, 1e-6) @ cen.T,
        "k.05_center": lambda hist: kernel(cen, hist, .05),
        "k.1_center": lambda hist: kernel(cen, hist, .1),
        "k.05_d.9_center": lambda hist: kernel(cen, hist, .05, .9),
    }
    out = {}
    for name, fn in variants.items():
        row = {}
        for split in ("valid", "test"):
            hist = hs[split]
            r = evaluate_split(lambda u: torch.cat([fn(hist[u[s:s+256]]) for s in range(0, len(u), 256)]), data, split)
            row[split] = round(float(r["ndcg@10"]), 4)
        out[name] = row
        print(d, name, row, flush=True)
    res[d] = out
out = Path(__file__).resolve().parent / "results" / "text_kernels.json"
out.write_text(json.dumps(res, indent=1) + "\n")
print(out)
