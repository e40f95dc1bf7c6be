"""Full-catalogue scoring speed of the history attention: K+1 matmuls against per-candidate target attention.

    nice -n 10 .venv/bin/python bench/bench_attention.py [--items 17632] [--users 256] [--len 50] [--dim 64]

Times, for `users` users with `len`-item histories over a catalogue of `items` random `dim`-d vectors (1 thread):

- `attention`: :class:`m6rec.models.attention.HistoryAttention` as the stages use it (K focused + 1 uniform
  interest, per-candidate gate over interests): the formulation that ranks the whole catalogue;
- `mean`: the mean-pooled history (one matmul), the floor;
- `din`: DIN-style target attention recomputed for every (user, candidate) pair, softmax over the history, timed
  on a slice of the catalogue and extrapolated to all of it (it is what the K-interest factorisation avoids).

Prints users/s and the time to rank the catalogue for every user of lastfm (1,892 users, 17,632 items).
"""

from __future__ import annotations

import argparse
import time

import torch

from m6rec.models.attention import HistoryAttention


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=17632)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--din-items", type=int, default=512, help="catalogue slice timed for the DIN baseline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    items = torch.randn(args.items, args.dim) / args.dim ** 0.5
    history = torch.randint(0, args.items, (args.users, args.len))
    mask = torch.ones(args.users, args.len, dtype=torch.bool)
    hist = items[history]
    att = HistoryAttention(args.dim, args.interests, args.len, "attention")
    mean = HistoryAttention(args.dim, pooling="mean")
    logits = att.item_logits(items)

    @torch.no_grad()
    def run_attention():
        return att.score(att(hist, mask, logits[history]), items).scores

    @torch.no_grad()
    def run_mean():
        return mean.score(mean(hist, mask), items).scores

    keys = att.key(hist)  # DIN: an attention MLP over (candidate, history item); here its cheapest bilinear form

    @torch.no_grad()
    def run_din():
        cand = items[: args.din_items]  # [C, d]
        w = torch.softmax(torch.einsum("bld,cd->bcl", keys @ att.key.weight, cand), dim=-1)  # [B, C, L]
        user = torch.einsum("bcl,bld->bcd", w, hist)  # a user vector per candidate
        return (user * cand).sum(-1)

    rows = []
    for name, fn, share in (("attention", run_attention, 1.0), ("mean", run_mean, 1.0),
                            ("din", run_din, args.items / args.din_items)):
        seconds = timed(fn) * share
        rows.append((name, seconds))
        print(f"{name:10s} {args.users / seconds:10.1f} users/s  full catalogue of {args.items} items; "
              f"lastfm (1892 users): {1892 / args.users * seconds:7.2f} s" + (" (extrapolated)" if share > 1 else ""))
    base = dict(rows)
    print(f"attention / mean: {base['attention'] / base['mean']:.1f}x;  din / attention: "
          f"{base['din'] / base['attention']:.1f}x")


if __name__ == "__main__":
    main()
