"""Channel variables and the records the analysis produces.

A *variable* is a set of channels that must be pruned together (union-find over `Vars`). A
tensor's channel axis is a tuple of segments ``(variable, repeat)``; ``repeat`` > 1 appears after
a flatten (each channel then spans ``repeat`` consecutive features). A variable can be *split*
into consecutive parts (``torch.split`` into unequal chunks): from then on it stands for the
concatenation of its parts, and `Vars.expand` rewrites segments in terms of the parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Seg = tuple[int, int]  # (variable, repeat)


class Vars:
    """Union-find over channel variables with size, frozen flag, block divisor and parts."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[bool] = []
        self.blocks: list[int] = []
        self.label: list[str] = []
        self.parts: dict[int, list[int]] = {}  # root -> its consecutive parts (after a split)

    def new(self, size: int, label: str, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.frozen.append(bool(frozen) or int(size) <= 1)
        self.blocks.append(1)
        self.label.append(label)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def freeze(self, v: int) -> None:
        r = self.find(v)
        self.frozen[r] = True
        for p in self.parts.get(r, ()):
            if not self.frozen[self.find(p)]:
                self.freeze(p)

    def set_blocks(self, v: int, g: int) -> None:
        r = self.find(v)
        if self.blocks[r] not in (1, g) or self.size[r] % g or r in self.parts:
            self.freeze(r)
        self.blocks[r] = max(self.blocks[r], g)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.freeze(ra)
            self.freeze(rb)
            return
        if ra in self.parts or rb in self.parts:
            self._union_parts(ra, rb)
            ra, rb = self.find(ra), self.find(rb)
            if ra == rb:
                return
        lo, hi = (ra, rb) if ra < rb else (rb, ra)  # the earliest variable names the group
        self.parent[hi] = lo
        if lo not in self.parts and hi in self.parts:
            self.parts[lo] = self.parts[hi]
        frozen = self.frozen[lo] or self.frozen[hi]
        bl, bh = self.blocks[lo], self.blocks[hi]
        self.blocks[lo] = max(bl, bh)
        if frozen or (bl != 1 and bh != 1 and bl != bh):
            self.freeze(lo)

    def _union_parts(self, ra: int, rb: int) -> None:
        """Unify two variables of which at least one is split: cut both at every part boundary."""
        if self.blocks[ra] != 1 or self.blocks[rb] != 1:
            self.freeze(ra)
            self.freeze(rb)
            return
        cuts = set(_cuts(self, self.expand(((ra, 1),)))) | set(_cuts(self, self.expand(((rb, 1),))))
        pa = self.refine(((ra, 1),), cuts)
        pb = self.refine(((rb, 1),), cuts)
        for (x, _), (y, _) in zip(pa, pb, strict=True):
            self.union(x, y)

    def split(self, v: int, sizes: list[int]) -> list[int]:
        """Split variable `v` into consecutive parts of `sizes` (re-uses an equal earlier split)."""
        r = self.find(v)
        if r in self.parts:
            old = self.parts[r]
            if [self.size[self.find(p)] for p in old] == list(sizes):
                return list(old)
        out, off = [], 0
        frozen = self.frozen[r] or self.blocks[r] != 1 or r in self.parts  # callers split leaves (refine)
        if frozen:
            self.freeze(r)
        for s in sizes:
            out.append(self.new(s, f"{self.label[r]}[{off}:{off + s}]", frozen=frozen))
            off += s
        if r not in self.parts:
            self.parts[r] = out
        return out

    def refine(self, segs: tuple[Seg, ...], cuts: set[int]) -> tuple[Seg, ...]:
        """`segs` expanded, with every repeat-1 variable split at the channel offsets `cuts`."""
        out: list[Seg] = []
        off = 0
        for v, rep in self.expand(segs):
            size = self.size[self.find(v)] * rep
            inner = sorted(c - off for c in cuts if off < c < off + size)
            if inner and rep == 1:
                bounds = [0, *inner, size]
                out.extend((p, 1) for p in self.split(v, [b - a for a, b in zip(bounds, bounds[1:])]))
            else:
                if inner:
                    self.freeze(v)
                out.append((v, rep))
            off += size
        return self.expand(tuple(out))

    def expand(self, segs: tuple[Seg, ...]) -> tuple[Seg, ...]:
        """Segments with every split variable replaced by its parts."""
        out: list[Seg] = []
        for v, rep in segs:
            r = self.find(v)
            if r in self.parts:
                out.extend(self.expand(tuple((p, rep) for p in self.parts[r])))
            else:
                out.append((v, rep))
        return tuple(out)


def _cuts(V: Vars, segs: tuple[Seg, ...]) -> list[int]:
    """Channel offsets where the segments of `segs` start (the first excluded)."""
    out, off = [], 0
    for v, rep in segs:
        if off:
            out.append(off)
        off += V.size[V.find(v)] * rep
    return out


@dataclass
class Desc:
    """Channel descriptor of one tensor: channel axis and its segments."""

    axis: int
    segs: tuple[Seg, ...]


@dataclass
class LayerInfo:
    """One graph node (a parameterised layer, a merge op, or a free-parameter op)."""

    name: str
    type: str
    op: str
    module: str | None
    in_segs: tuple[Seg, ...] = ()
    out_segs: tuple[Seg, ...] = ()
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    flops_terms: list[int] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    preds: set[int] = field(default_factory=set)
    depth: int = 0


@dataclass
class FlopTerm:
    """MACs = num * L(a) * L(b) // den, where L(x) = kept channels of a segment list (None = 1)."""

    num: int
    den: int
    a: tuple[Seg, ...] | None
    b: tuple[Seg, ...] | None
    node: int
    binary: bool = False  # binary MACs (bops)


@dataclass
class ModuleInfo:
    """What the pruner must update on a leaf module after slicing its tensors (see its rule's resize)."""

    kind: str  # conv | conv_dw | conv_grouped | linear | norm | groupnorm | layernorm | prelu | frozen | ...
    in_segs: tuple[Seg, ...] = ()
    out_segs: tuple[Seg, ...] = ()
    groups: int = 1


@dataclass
class SizeAttr:
    """A module attribute holding channel counts the forward reads (split sizes, normalized_shape)."""

    module: str
    attr: str
    parts: list[tuple[Seg, ...]]  # one entry per count
    kind: str = "list"  # list | tuple | int


@dataclass
class Analysis:
    vars: Vars
    layers: list[LayerInfo]
    flop_terms: list[FlopTerm]
    bindings: dict[str, dict[int, tuple[Seg, ...]]]  # tensor qualname -> axis -> segments
    grouped_in: dict[str, int]  # conv weight qualname -> groups (axis 1 is per-group)
    modules: dict[str, ModuleInfo]
    hash_layer: str
    output_shapes: list[tuple[int, ...]]
    batch: int
    size_attrs: list[SizeAttr] = field(default_factory=list)
    binary_params: set[str] = field(default_factory=set)  # weights used as sign(W) * alpha (1 bit each)
    derived: dict[str, str] = field(default_factory=dict)  # conv module -> the parameter its weight derives from

    def expand_all(self) -> None:
        """Rewrite every segment list in terms of split parts (done once, after the analysis)."""
        ex = self.vars.expand
        for axes in self.bindings.values():
            for ax in list(axes):
                axes[ax] = ex(axes[ax])
        for lay in self.layers:
            lay.in_segs, lay.out_segs = ex(lay.in_segs), ex(lay.out_segs)
        for info in self.modules.values():
            info.in_segs, info.out_segs = ex(info.in_segs), ex(info.out_segs)
        for t in self.flop_terms:
            t.a = ex(t.a) if t.a is not None else None
            t.b = ex(t.b) if t.b is not None else None
        for sa in self.size_attrs:
            sa.parts = [ex(p) for p in sa.parts]
