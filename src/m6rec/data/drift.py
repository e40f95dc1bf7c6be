"""Volume and distribution drift of a prepared folder against the last validated data (the `validate` baseline).

A dataset that changes every day cannot be pinned by checksums; what stops a truncated, duplicated or otherwise
broken export is that it differs from yesterday's data by far more than a day's growth. Per domain, against the
previously published `data/validated`:

* ``raw_rows_ratio``: rows the export had before sampling and de-duplication (meta.json ``n_raw_interactions``), now
  over then: an export with every row twice is collapsed by `prepare`, but not here;
* ``<split>_ratio``: interactions per split, now over then;
* ``new_user_share`` / ``new_item_share``: share of the domain's users / catalogue whose raw id the baseline lacks;
* ``rating_mean_shift``: explicit domains, ``|mean rating now - mean rating then|``.

The checks are GX expectations on the derived ``drift`` frame (one row per compared domain), so failures read like
every other one: the domain, the column (the check), the observed value and the allowed range. The first run (no
baseline), a domain the baseline lacks and a change of prepare's split parameters are not compared, and the summary
says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from m6rec.data import schema

RATIO_COLUMNS = ("raw_rows_ratio", *(f"{s}_ratio" for s in schema.SPLITS))


@dataclass(frozen=True)
class DriftLimits:
    count_ratio: tuple[float, float] = (0.7, 1.5)  # allowed [min, max] of rows now / rows then
    max_new_user_share: float = 0.5
    max_new_item_share: float = 0.5
    max_rating_mean_shift: float = 0.25


def _ratio(now: float, then: float) -> float:
    # 0 -> 0 is no change; from 0 to n counts as from 1 to n, so a split that appears from nowhere still fails
    return 1.0 if now == then else float(now) / max(float(then), 1.0)


def _share_new(now: pd.Series, then: pd.Series) -> float:
    ids = set(now.astype(str))
    return len(ids - set(then.astype(str))) / len(ids) if ids else 0.0


def derive_drift(tables: Mapping[str, pd.DataFrame], meta: dict, previous: tuple[Mapping[str, pd.DataFrame], dict]
                 | None, baseline: str) -> tuple[pd.DataFrame | None, dict]:
    """The `drift` frame (None when nothing can be compared) and the report that goes into summary.json."""
    if previous is None:
        return None, {"baseline": None, "status": "first run: no validated data to compare with; drift checks "
                                                  "passed without comparison", "domains": {}, "skipped": {}}
    prev_tables, prev_meta = previous
    if prev_meta.get("split_params") != meta.get("split_params"):
        return None, {"baseline": baseline, "status": "not compared: prepare's split parameters changed "
                      f"({prev_meta.get('split_params')} -> {meta.get('split_params')}), so the last validated "
                      "data is no like-for-like baseline", "domains": {}, "skipped": {}}
    rows, report, skipped = [], {}, {}
    inter, prev_inter = tables["interactions"], prev_tables["interactions"]
    for d in meta["domains"]:
        info, before = meta["per_domain"][d], prev_meta["per_domain"].get(d)
        if before is None:
            skipped[d] = "new domain: not in the last validated data"
            continue
        now_i, then_i = inter[inter["domain"] == d], prev_inter[prev_inter["domain"] == d]
        counts = {"raw_rows": (info.get("n_raw_interactions"), before.get("n_raw_interactions"))}
        now_split, then_split = now_i["split"].value_counts(), then_i["split"].value_counts()
        counts.update({s: (int(now_split.get(s, 0)), int(then_split.get(s, 0))) for s in schema.SPLITS})
        row: dict = {"domain": d}
        for key, (now, then) in counts.items():
            # A baseline prepared before n_raw_interactions existed: NaN, which the expectation skips
            row[f"{key}_ratio"] = np.nan if now is None or then is None else _ratio(now, then)
        users, prev_users = tables["users"], prev_tables["users"]
        items, prev_items = tables["items"], prev_tables["items"]
        row["new_user_share"] = _share_new(users.loc[users["domain"] == d, "raw_user"],
                                           prev_users.loc[prev_users["domain"] == d, "raw_user"])
        row["new_item_share"] = _share_new(items.loc[items["domain"] == d, "raw_item"],
                                           prev_items.loc[prev_items["domain"] == d, "raw_item"])
        explicit = info.get("feedback") == "explicit" and len(now_i) and len(then_i)
        row["rating_mean_shift"] = (abs(float(now_i["value"].mean()) - float(then_i["value"].mean()))
                                    if explicit else np.nan)
        rows.append(row)
        report[d] = {"rows_now_then": {k: list(v) for k, v in counts.items()},
                     **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()
                        if k != "domain"}}
    status = f"compared {len(rows)} domains with the last validated data"
    frame = pd.DataFrame(rows, columns=["domain", *RATIO_COLUMNS, "new_user_share", "new_item_share",
                                        "rating_mean_shift"]) if rows else None
    return frame, {"baseline": baseline, "status": status, "domains": report, "skipped": skipped}


def drift_suite(limits: DriftLimits) -> gx.ExpectationSuite:
    """Every drift column within its allowed range (on the derived `drift` frame, one row per domain)."""
    lo, hi = limits.count_ratio
    t = {"table": "drift"}
    exps = [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi, meta=t,
                                              notes=f"{c.removesuffix('_ratio')} rows now / in the last validated "
                                                    f"data") for c in RATIO_COLUMNS]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(column="new_user_share", min_value=0.0, max_value=limits.max_new_user_share,
                                          meta=t, notes="share of users the last validated data lacks"),
        gxe.ExpectColumnValuesToBeBetween(column="new_item_share", min_value=0.0, max_value=limits.max_new_item_share,
                                          meta=t, notes="share of catalogue items the last validated data lacks"),
        gxe.ExpectColumnValuesToBeBetween(column="rating_mean_shift", min_value=0.0,
                                          max_value=limits.max_rating_mean_shift, meta=t,
                                          notes="explicit domains: |mean rating now - then|"),
    ]
    return gx.ExpectationSuite(name="drift", expectations=exps, meta={"table": "drift", "domain": None})
