"""Parameter groups and fine-tuning modes of the history model: which weights train in which mode."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

from torch import Tensor, nn

FINETUNE_MODES = ("zero_shot", "efficient", "full")
# Parameter groups by name pattern (fnmatch); every parameter belongs to exactly one.
GROUPS = {
    "encoder": ("encoder.*",),
    "heads": ("rating_head.*", "like_head.*", "retrieval_log_scale"),
    "text_projection": ("text_proj.*",),
    "adapters": ("items.*.recency",),
    "item_residuals": ("items.*.residual",),
}
MODE_GROUPS = {"zero_shot": (), "efficient": ("heads", "adapters", "text_projection"),
               "full": ("encoder", "heads", "adapters", "text_projection", "item_residuals")}


class ParameterGroups(nn.Module):
    """Freezing by group and moving the domain-independent weights between models (fine-tuning)."""

    # ---- fine-tuning -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names of each group in :data:`GROUPS` (every parameter is in exactly one)."""
        groups: dict[str, list[str]] = {g: [] for g in GROUPS}
        for name, _ in self.named_parameters():
            owners = [g for g, patterns in GROUPS.items() if any(fnmatch(name, p) for p in patterns)]
            if len(owners) != 1:
                raise RuntimeError(f"parameter {name} belongs to groups {owners}; fix GROUPS")
            groups[owners[0]].append(name)
        return groups

    def set_trainable_groups(self, groups: Sequence[str]) -> list[str]:
        """Freeze every parameter outside `groups` (names of :data:`GROUPS`); returns the trainable names."""
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown parameter groups {unknown}; groups: {list(GROUPS)}")
        by_group = self.parameter_groups()
        trainable = {n for g in groups for n in by_group[g]}
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)
        return sorted(trainable)

    def set_trainable(self, mode: str) -> list[str]:
        """Freeze every parameter outside the groups of fine-tuning `mode` (:data:`MODE_GROUPS`)."""
        if mode not in MODE_GROUPS:
            raise ValueError(f"unknown fine-tuning mode {mode!r}; modes: {list(MODE_GROUPS)}")
        return self.set_trainable_groups(MODE_GROUPS[mode])

    def shared_state(self) -> dict[str, Tensor]:
        """Weights that do not depend on a domain's catalogue (encoder, heads, logit scale, text projection)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("items.")}

    def load_shared(self, state: dict[str, Tensor]) -> None:
        """Load :meth:`shared_state` of another model built with the same dims (catalogues may differ)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("items.")]
        if missing or unexpected:
            raise ValueError(f"shared weights do not fit: missing {missing}, unexpected {list(unexpected)}")


__all__ = ["FINETUNE_MODES", "GROUPS", "MODE_GROUPS", "ParameterGroups"]
