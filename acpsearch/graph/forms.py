"""The closed-form cost's machinery: linear forms over the groups' kept counts and cost terms.

A *form* is "kept channels of a segment list": a linear form of the groups' kept counts plus a
constant (channels of frozen variables), stored as one row of ``form_matrix`` / ``form_const``
(form 0 is the constant 1). The per-layer MAC formula is the layer rule's ``MacTerm``
(``acpsearch.graph.cost``), the one ``acpsearch.pruning.measure_cost`` evaluates on the real
module. Each conv/linear call contributes ``num * L_a * L_b // den`` MACs and each parameter
tensor ``const * L_a * L_b // den`` entries, where ``L`` is the value of a form. So ``cost`` and
``cost_batch`` are a small matrix product plus a gather, exact in integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from acpsearch.errors import UnsupportedModelError
from acpsearch.graph.channels import Analysis, Seg

FormKey = tuple[tuple[tuple[int, int], ...], int]  # ((group index, coefficient), ...), constant


class CostForms:
    """Linear forms and cost terms of a ChannelGraph. The graph sets `model`, `analysis`,
    `groups`, `group_of_root` (variable root -> group index) and `channels` before
    `_build_terms`."""

    model: nn.Module
    analysis: Analysis
    groups: Sequence[object]
    group_of_root: dict[int, int]
    channels: np.ndarray

    def form_of(self, segs: tuple[Seg, ...] | None) -> int:
        """Index of the linear form 'kept channels of `segs`' (0 = the constant 1)."""
        if segs is None:
            return 0
        V = self.analysis.vars
        coef: dict[int, int] = {}
        const = 0
        for v, r in segs:
            root = V.find(v)
            gi = self.group_of_root.get(root)
            if gi is None:
                const += V.size[root] * r
            else:
                coef[gi] = coef.get(gi, 0) + r
        key = (tuple(sorted(coef.items())), const)
        idx = self._form_key.get(key)
        if idx is None:
            idx = len(self._forms)
            self._form_key[key] = idx
            self._forms.append(key)
        return idx

    def _build_terms(self) -> None:
        """The FLOP terms of the analysis and one parameter term per tensor, over forms."""
        self._forms: list[FormKey] = [((), 1)]
        self._form_key: dict[FormKey, int] = {((), 1): 0}
        an = self.analysis
        ft = [(t.num, t.den, self.form_of(t.a), self.form_of(t.b), t.node) for t in an.flop_terms if not t.binary]
        bt = [(t.num, t.den, self.form_of(t.a), self.form_of(t.b)) for t in an.flop_terms if t.binary]
        # Parameters: one term per tensor; bound axes are forms, the rest constants.
        pt: list[tuple[int, int, int, int]] = []
        self._param_term_of: dict[str, int] = {}
        for pname, p in self.model.named_parameters():
            axes = an.bindings.get(pname, {})
            const, den, forms = 1, 1, []
            for ax, s in enumerate(p.shape):
                if ax in axes:
                    forms.append(self.form_of(axes[ax]))
                elif ax == 1 and -1 in axes:
                    forms.append(self.form_of(axes[-1]))
                    den = an.grouped_in[pname]
                else:
                    const *= int(s)
            forms = [f for f in forms if f != 0]
            if len(forms) > 2:
                raise UnsupportedModelError(f"parameter {pname!r}: more than two prunable axes")
            while len(forms) < 2:
                forms.append(0)
            self._param_term_of[pname] = len(pt)
            pt.append((const, den, forms[0], forms[1]))
        self._set_form_matrix()
        self._P: tuple[Any, ...] | None = None
        self.ft_num = np.array([t[0] for t in ft], dtype=np.int64)
        self.ft_den = np.array([t[1] for t in ft], dtype=np.int64)
        self.ft_a = np.array([t[2] for t in ft], dtype=np.int64)
        self.ft_b = np.array([t[3] for t in ft], dtype=np.int64)
        self.ft_node = np.array([t[4] for t in ft], dtype=np.int64)
        self.bt = np.array(bt, dtype=np.int64).reshape(-1, 4)  # binary MAC terms: num, den, form a, form b
        self.pt_binary = np.array([pn in an.binary_params for pn in self._param_term_of], dtype=bool)
        self.pt_num = np.array([t[0] for t in pt], dtype=np.int64)
        self.pt_den = np.array([t[1] for t in pt], dtype=np.int64)
        self.pt_a = np.array([t[2] for t in pt], dtype=np.int64)
        self.pt_b = np.array([t[3] for t in pt], dtype=np.int64)

    def _set_form_matrix(self) -> None:
        """(Re)build `form_matrix` [forms, groups] and `form_const` from the forms known so far."""
        nf = len(self._forms)
        fm = np.zeros((nf, len(self.groups)), dtype=np.int64)
        fc = np.zeros(nf, dtype=np.int64)
        for i, (coef, const) in enumerate(self._forms):
            for gi, c in coef:
                fm[i, gi] = c
            fc[i] = const
        self.form_matrix, self.form_const, self._fmT = fm, fc, fm.T.copy()

    def _eval_forms(self, kept: np.ndarray) -> np.ndarray:
        # numpy's integer matmul: no BLAS threads (multi-threaded BLAS spin-waits on a busy box)
        return np.asarray(kept, dtype=np.int64) @ self._fmT + self.form_const

    def _pairs(self) -> tuple[np.ndarray, ...]:
        """Terms merged per (form a, form b) pair: cost = sum_p q_p * L_a * L_b (far fewer pairs than terms)."""
        nf = len(self._forms)
        if self._P is None or self._P[0] != nf:
            out: list[Any] = [nf]
            for ta, tb, num, den in (
                (self.ft_a, self.ft_b, self.ft_num, self.ft_den),
                (self.pt_a, self.pt_b, self.pt_num, self.pt_den),
            ):
                Q = np.zeros((nf, nf))
                np.add.at(Q, (ta, tb), num / den)
                ia, ib = np.nonzero(Q)
                out += [ia, ib, Q[ia, ib]]
            self._P = tuple(out)
        return self._P

    def _eval_binary(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(binary MACs, binary parameters) per kept-count row; zeros for a float network."""
        n = np.asarray(kept).shape[0]
        if not len(self.bt) and not self.pt_binary.any():
            return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        L = self._eval_forms(kept)
        num, den, a, b = self.bt.T
        bops = (L[:, a] * L[:, b] * num // den).sum(axis=1) if len(self.bt) else np.zeros(n, dtype=np.int64)
        m = self.pt_binary
        bpar = (L[:, self.pt_a[m]] * L[:, self.pt_b[m]] * self.pt_num[m] // self.pt_den[m]).sum(axis=1)
        return bops.astype(np.int64), bpar.astype(np.int64)

    def _eval_terms(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Exact: every term is an integer (grouped convs keep multiples of their groups) and the
        # float64 sums stay far below 2**53, so rounding recovers the integer totals.
        L = self._eval_forms(kept).astype(np.float64)
        _, fa, fb, fq, pa, pb, pq = self._pairs()
        f = np.rint((L[:, fa] * L[:, fb] * fq).sum(axis=1)).astype(np.int64)
        p = np.rint((L[:, pa] * L[:, pb] * pq).sum(axis=1)).astype(np.int64)
        return f, p
