"""`CodeMap`: how the bits of a short code are formed from the base network's hash neurons.

Bit g of the short code is ``sign(sum_{i in groups[g]} signs[g][k] * h_i)`` over the base hash
layer's outputs h. Pruning is the special case of singleton groups with sign +1 (the kept
indices); merging (NMLayer) has larger groups. Maps compose, so a code shortened in several steps,
by either method, is one map from the base layer. The map is what a checkpoint stores (plain lists:
weights-only safe) and what ``surgery.apply_code_map`` replays on a freshly built base network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from acpsearch.errors import CheckpointError, SpecError


@dataclass(frozen=True)
class CodeMap:
    """Groups of base hash neurons (first member = the group's lead) and their signs."""

    from_bits: int
    groups: tuple[tuple[int, ...], ...]
    signs: tuple[tuple[int, ...], ...]

    @property
    def bits(self) -> int:
        return len(self.groups)

    @property
    def is_pruning(self) -> bool:
        return all(len(g) == 1 and s[0] == 1 for g, s in zip(self.groups, self.signs))

    @property
    def kept(self) -> list[int]:
        """The lead neuron of every group (for pruning: the kept indices)."""
        return [g[0] for g in self.groups]

    @classmethod
    def identity(cls, bits: int) -> CodeMap:
        return cls(bits, tuple((i,) for i in range(bits)), tuple((1,) for _ in range(bits)))

    @classmethod
    def pruned(cls, from_bits: int, keep: Sequence[int]) -> CodeMap:
        return cls.merged(from_bits, [[int(i)] for i in keep], [[1] for _ in keep])

    @classmethod
    def merged(cls, from_bits: int, groups: Sequence[Sequence[int]], signs: Sequence[Sequence[int]]) -> CodeMap:
        """A map from groups and signs, checked: every index in range and used at most once,
        signs +-1 of the same shape, at least one group; SpecError otherwise."""
        g = tuple(tuple(int(i) for i in grp) for grp in groups)
        s = tuple(tuple(int(v) for v in sg) for sg in signs)
        if not g:
            raise SpecError("code: a code needs at least one bit (no groups given)")
        if len(s) != len(g) or any(len(a) != len(b) or not a for a, b in zip(g, s)):
            raise SpecError("code.signs: one +-1 sign per group member is needed")
        flat = [i for grp in g for i in grp]
        if any(not 0 <= i < from_bits for i in flat):
            raise SpecError(f"code.groups: indices must lie in [0, {from_bits})")
        if len(set(flat)) != len(flat):
            raise SpecError("code.groups: a hash neuron belongs to at most one group")
        if any(v not in (1, -1) for sg in s for v in sg):
            raise SpecError("code.signs: signs must be +1 or -1")
        return cls(int(from_bits), g, s)

    def then(self, local: CodeMap) -> CodeMap:
        """This map followed by `local` (whose from_bits is this map's bits)."""
        if local.from_bits != self.bits:
            raise SpecError(f"code: a map from {local.from_bits} bits cannot follow one to {self.bits}")
        groups, signs = [], []
        for lg, ls in zip(local.groups, local.signs):
            groups.append([i for j in lg for i in self.groups[j]])
            signs.append([s * v for j, s in zip(lg, ls) for v in self.signs[j]])
        return CodeMap.merged(self.from_bits, groups, signs)

    def matrix(self) -> torch.Tensor:
        """(bits, from_bits) matrix M with short = M @ base (entries 0 / +-1)."""
        m = torch.zeros(self.bits, self.from_bits)
        for g, (grp, sg) in enumerate(zip(self.groups, self.signs)):
            for i, s in zip(grp, sg):
                m[g, i] = float(s)
        return m

    def centres(self, base: torch.Tensor | None) -> torch.Tensor | None:
        """Class centres of the short code from the base centres (C, from_bits): the sign of the
        signed sum of the members' columns, a tie going to the group lead's column."""
        if base is None:
            return None
        summed = base.float() @ self.matrix().T
        lead = torch.stack([base[:, g[0]].float() * s[0] for g, s in zip(self.groups, self.signs)], 1)
        return torch.where(summed > 0, 1.0, torch.where(summed < 0, -1.0, lead))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from_bits": self.from_bits, "bits": self.bits}
        if self.is_pruning:
            out["kept"] = self.kept
        else:
            out["groups"] = [list(g) for g in self.groups]
            out["signs"] = [list(s) for s in self.signs]
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "code") -> CodeMap:
        """The map a checkpoint stores; anything malformed is one CheckpointError line."""
        if not isinstance(d, dict) or not isinstance(d.get("from_bits"), int) or d["from_bits"] < 1:
            raise CheckpointError(f"{where}: must be a mapping with an integer 'from_bits' >= 1")
        try:
            if "kept" in d:
                if not isinstance(d["kept"], list):
                    raise SpecError("kept must be a list")
                return cls.pruned(d["from_bits"], d["kept"])
            groups, signs = d.get("groups"), d.get("signs")
            if not isinstance(groups, list) or not isinstance(signs, list):
                raise SpecError("needs 'kept' or 'groups' and 'signs' lists")
            if not all(isinstance(g, list) for g in (*groups, *signs)):
                raise SpecError("groups and signs must be lists of lists")
            return cls.merged(d["from_bits"], groups, signs)
        except (SpecError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: {exc}"[:300]) from None
