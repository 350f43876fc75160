"""Neuron merging (NMLayer-style): which hash neurons to merge, and with which signs.

The NMLayer paper's abstract says: a graph over the hash neurons models their redundancy; it is
learned in alternating active and frozen phases; redundant neurons are merged so that every bit
becomes about equally important; several such layers shorten a long code progressively; no weights
are added. The full algorithm is not available to us, so the following is OUR design, consistent
with those statements:

- State: a partition of the base hash neurons into groups with a sign per member (a `CodeMap`);
  its graph has an edge between two neurons of one group. Bit g of the code is
  sign(sum_i s_i h_i) over its members (see `surgery.merge_bits`).
- Active phase (`merge_step`): on a slice of the training set,
  importance I_g = mAP(all bits) - mAP(without bit g) (training queries against other training
  items, the DHWP map criterion), redundancy rho_gh = |corr(z_g, z_h)| of the continuous code with
  sigma_gh = sign(corr). The least important bit g is merged into its most redundant partner h
  (``partner="correlation"``; or into the next least important bit, ``partner="importance"``), its
  members' signs multiplied by sigma_gh so anti-correlated bits add up; the more important bit
  leads the group (its centre column wins a tie). A bit takes part in at most one merge per active
  phase; the phase makes `n_merges` merges. A bit redundant with no other (|corr| < 0.1, e.g. a
  constant neuron) is dropped rather than added to an unrelated bit.
- Frozen phase: the groups are fixed and the network (backbone at a lower learning rate) is
  fine-tuned with the hash loss on the merged code. We merge the hash layer physically at once
  (the NMLayer "truncation": merging is linear, so row g becomes sum_i s_i W_i), and train the
  merged layer directly during the frozen phase.
- Progressive: `shorten(method="merge")` alternates phases until each length of the schedule is
  reached (about one frozen epoch per active phase, so the fine-tuning budget equals pruning's).
- With class centres (CSQ) a merge that would leave two classes on one centre is skipped; the
  merged centre is sign(sum_i s_i c_i), a tie going to the lead, which for the duplicated columns
  of Hadamard centres is their shared column. When no merge keeps the centres apart (very short
  codes), the remaining merges are made without the guard.
"""

from __future__ import annotations

import numpy as np
import torch

from acpsearch.codelength.codemap import CodeMap
from acpsearch.codelength.criteria import BitData, map_scores
from acpsearch.codelength.layer import min_centre_distance
from acpsearch.errors import SpecError

PARTNERS = ("correlation", "importance")


def correlation(z: torch.Tensor) -> np.ndarray:
    """(K, K) Pearson correlation of the columns of z (a constant column correlates 0)."""
    x = z.double().numpy()
    x = x - x.mean(0, keepdims=True)
    norm = np.sqrt((x * x).sum(0))
    norm[norm == 0] = np.inf
    c: np.ndarray = (x.T @ x) / np.outer(norm, norm)
    return c


def _coincide_after(centres: torch.Tensor | None, dropped: int, merged: set[int]) -> bool:
    """Whether dropping bit `dropped`'s centre column (plus those already merged away) makes two
    class centres equal, when they were apart before."""
    if centres is None or centres.shape[0] < 2:
        return False
    keep_now = [j for j in range(centres.shape[1]) if j not in merged]
    if min_centre_distance(centres[:, keep_now]) == 0:
        return False
    keep = [j for j in keep_now if j != dropped]
    return bool(keep) and min_centre_distance(centres[:, keep]) == 0


def merge_step(data: BitData, n_merges: int, partner: str = "correlation", min_corr: float = 0.1) -> CodeMap:
    """One active phase: a local map from the current data.bits bits to data.bits - n_merges.

    A bit to merge whose partner correlates below `min_corr` is dropped instead (summing an
    unrelated or constant neuron into another bit only shifts or blurs that bit)."""
    if partner not in PARTNERS:
        raise SpecError(f"partner: must be one of {', '.join(PARTNERS)}, got {partner!r}")
    k = data.bits
    if not 0 <= n_merges <= k // 2:
        raise SpecError(f"merge: {n_merges} merges of {k} bits in one phase (at most {k // 2})")
    importance = map_scores(data)  # -mAP without the bit: a larger value = more important
    corr = correlation(data.z)
    order = [int(i) for i in np.lexsort((np.arange(k), importance))]  # least important first
    used: set[int] = set()
    absorbed: dict[int, tuple[int, int]] = {}  # g -> (lead h, sigma); h = -1: dropped
    for guarded in (True, False):  # the centre guard first; without it only if merges are still missing
        for g in order:
            if len(absorbed) == n_merges:
                break
            if g in used or (guarded and _coincide_after(data.centres, g, set(absorbed))):
                continue
            free = [h for h in range(k) if h != g and h not in used]
            if not free:
                break
            if partner == "correlation":
                h = max(free, key=lambda j: (abs(corr[g, j]), importance[j], -j))
            else:
                h = min(free, key=lambda j: (importance[j], j))
            if abs(corr[g, h]) < min_corr:  # redundant with nothing (e.g. a constant bit): dropped
                absorbed[g] = (-1, 0)
                used.add(g)
                continue
            absorbed[g] = (h, 1 if corr[g, h] >= 0 else -1)
            used.update((g, h))
    members: dict[int, list[tuple[int, int]]] = {j: [(j, 1)] for j in range(k) if j not in absorbed}
    for g, (h, sigma) in absorbed.items():
        if h >= 0:
            members[h].append((g, sigma))
    groups = [[i for i, _ in members[j]] for j in sorted(members)]
    signs = [[s for _, s in members[j]] for j in sorted(members)]
    return CodeMap.merged(k, groups, signs)
