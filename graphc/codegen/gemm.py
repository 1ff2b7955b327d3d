"""Generates BLIS-style packed, register-blocked GEMM kernels (C (+)= op(A)·op(B)) as LLVM IR.

Structure of the generated code, per dtype and transpose variant:

- `graphc_gemm_{dtype}_{ta}{tb}_{MR}x{NR}`: the public entry point (see `define_gemm`), named for
  its register tile, which `blocking` picks from the shape of C: GEMMs with different tiles share
  a module.
- `..._range`: the whole GEMM restricted to output columns [n0, n1), packing into the caller's
  `scratch` (`scratch_bytes`, 64-byte aligned). Ranges are independent (each packs its own A and
  B), so a thread pool can split N across threads by calling it with disjoint column ranges and a
  scratch slot per thread; the single-threaded entry point calls it once with (0, N).
- Shared per dtype and tile: the micro-kernels and the packing routines (internal functions), named
  for their tile or strip width (KC is the same for every tile). The code has
  no mutable globals: all state is in the caller's buffers, so independent callers may run at once.

Loop nest (BLIS): column blocks of NC; K blocks of at most KC (the first overwrites C unless
accumulating); pack the KC×NC slice of op(B) into NR-wide zero-padded strips; row blocks of MC;
pack the MC×KC slice of Aᵀ into MR-tall strips (A's rows are read in place, unless their stride
aliases in L1); then one MR×NR micro-tile per strip pair. Transposes happen only inside packing:
Bᵀ by in-register shufflevector transposes of L×L blocks; A needs none, as the micro-kernel
broadcasts A values from a k-major (Aᵀ) or row-major (A) strip.

A small C = A·Bᵀ over a long K (a conv weight gradient) instead takes the dot-product kernel
(`graphc_gemm_{dtype}_nt_dot{MR}x{NR}`, `dot_blocking`): no packing; each accumulator of its tile
is a vector along K, summed across lanes at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from llvmlite import ir

from .target import Target

_I1, _I32, _I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
_I8P = ir.IntType(8).as_pointer()
_FLOAT = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
ELEMENT_BYTES = {"f32": 4, "f64": 8}
_GEMM_NAMES = ["M", "N", "K", "A", "lda", "B", "ldb", "C", "ldc", "accumulate"]


@dataclass(frozen=True)
class Blocking:
    """Register tile (MR×NR) and cache blocks (MC, KC, NC) for one target, dtype and shape of C."""

    lanes: int
    mr: int
    nr: int
    mc: int
    kc: int
    nc: int
    dot: bool = False  # the dot-product kernel (see `dot_blocking`): an MR×NR tile of C, no packing


def blocking(target: Target, dtype: str, shape: tuple[int, int] | None = None) -> Blocking:
    """The tile and cache blocking of `dtype` kernels on `target` for a C of `shape` (M, N); None:
    the target's default tile, for any shape.

    The default tile fills C when M and N are large. When M is below its MR, the tile takes MR = M
    rows and as many vectors of N as the registers hold (the default would leave rows of every
    accumulator tile empty: conv weights with 6 output channels, batch-8 layers); its mirror image,
    a C narrower than the default tile (logits), takes fewer vectors and as many more rows.
    """
    lanes, tune = target.lanes(dtype), target.tuning
    (mr, nv), registers = tune.tile[dtype], tune.registers
    m, n = (max(x, 1) for x in shape) if shape else (mr, nv * lanes)
    vectors = -(-n // lanes)  # in a row of C
    if m < mr:
        # Registers hold m·nv accumulators, the nv B vectors each row reuses and an A broadcast.
        # Of the widths that fit, the one with the fewest vector FMAs per k over C, counting one
        # more per strip for its B loads and loop; the widest of equals.
        fits = range(1, (registers - 1) // (m + 1) + 1)
        mr, nv = m, min(fits, key=lambda v: (-(-vectors // v) * (m * v + 1), -v))
    elif vectors < nv:
        # the mirror image: as many accumulators, in fewer vectors and more rows
        mr, nv = min(m, mr * nv // vectors), vectors
    else:
        # Rows per tile, from half the default's to all of them: the fewest vector FMAs over M,
        # counting one more per tile as above (50 rows take five tiles of 10, not four of 16).
        mr = min(range(max(mr // 2, 1), mr + 1), key=lambda r: (-(-m // r) * (r * nv + 1), -r))
    nr = nv * lanes
    return Blocking(lanes=lanes, mr=mr, nr=nr, mc=tune.mc // mr * mr, kc=tune.kc, nc=tune.nc // nr * nr)


DOT_MAX_C = 64 * 64  # elements of C up to which a long-K A·Bᵀ takes the dot-product kernel
DOT_BLOCK_BYTES = 1 << 19  # rows of A and B the dot-product kernel sweeps per K block


def dot_blocking(target: Target, dtype: str, trans_a: bool, trans_b: bool, m: int, n: int,
                 k: int) -> Blocking | None:
    """The dot-product kernel's tile for C[m,n] = A·Bᵀ with A (m×k) and B (n×k) both read along k
    (a conv weight gradient: dY[Co, pixels] · colsᵀ), when C is small and k long (k ≥ 4·max(m, n)),
    or None. Packing would cost as much as the multiply there: B's transposing pack touches each
    element once for only m multiply-adds. Each of the MR×NR accumulators is a vector of k-lanes
    (A and B rows load straight from memory), summed across lanes once at the end. MR×NR is the
    cheapest tile over C, of those that fit the registers with the MR + NR row vectors each step
    loads."""
    tune = target.tuning
    if trans_a or not trans_b or m * n > tune.dot_max_c or k < 4 * max(m, n):
        return None
    tiles = [(r, c) for r in range(1, 9) for c in range(1, 9) if r * c + r + c <= tune.dot_budget]
    # steps over C: an edge tile costs a whole one; a step is MR·NR FMAs or MR + NR loads
    cost = lambda t: -(-m // t[0]) * -(-n // t[1]) * max(t[0] * t[1], t[0] + t[1])
    mr, nr = min(tiles, key=lambda t: (cost(t), -t[0] * t[1]))
    # K blocks whose rows of A and B fit half an L2 (KC: a multiple of the vector)
    lanes = target.lanes(dtype)
    kc = max(tune.dot_block_bytes // ((m + n) * ELEMENT_BYTES[dtype]) // lanes, 1) * lanes
    return Blocking(lanes=lanes, mr=mr, nr=nr, mc=mr, kc=kc, nc=nr, dot=True)


def gemm_blocking(target: Target, dtype: str, trans_a: bool, trans_b: bool,
                  shape: tuple[int, int] | None = None, k: int | None = None) -> Blocking:
    """The blocking a GEMM made for a C of `shape` over `k` uses: the dot-product kernel's where
    `dot_blocking` takes it, else `blocking`'s tile for the shape (None: the default tile)."""
    return (shape is not None and k is not None and dot_blocking(target, dtype, trans_a, trans_b, *shape, k)) \
        or blocking(target, dtype, shape)


def scratch_bytes(target: Target, dtype: str) -> int:
    """Bytes of packing scratch one GEMM call needs, whatever its tile: an MC×KC panel of A and a
    KC×NC one of B."""
    tune = target.tuning
    return (tune.mc + tune.nc) * tune.kc * ELEMENT_BYTES[dtype]


def _pack_lanes(width: int, lanes: int) -> int:
    """Vector width for packing `width`-element strips: the largest power of two dividing it."""
    p = 1
    while p * 2 <= lanes and width % (p * 2) == 0:
        p *= 2
    return p


class _Gen:
    """IR emission helpers bound to one module, dtype and blocking."""

    def __init__(self, module: ir.Module, target: Target, dtype: str, blk: Blocking) -> None:
        self.module, self.dtype, self.tune = module, dtype, target.tuning
        self.t = _FLOAT[dtype]
        self.size = ELEMENT_BYTES[dtype]
        self.blk = blk
        self.ptr = self.t.as_pointer()
        self.gemm_args = [_I64, _I64, _I64, self.ptr, _I64, self.ptr, _I64, self.ptr, _I64, _I32]

    # -- types, constants, intrinsics -----------------------------------------------------

    def vec(self, n: int) -> ir.VectorType:
        return ir.VectorType(self.t, n)

    def suffix(self, n: int) -> str:
        return f"v{n}{'f32' if self.dtype == 'f32' else 'f64'}"

    def intrinsic(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        # Vector intrinsics are declared by mangled name: Module.declare_intrinsic rejects them.
        fn = self.module.globals.get(name)
        return fn if fn is not None else ir.Function(self.module, ir.FunctionType(ret, args), name)

    def fmuladd(self, b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
        # fmuladd is a single FMA where the target has one and mul+add elsewhere (no libcall).
        v = x.type
        fn = self.intrinsic(f"llvm.fmuladd.{self.suffix(v.count)}", v, [v, v, v])
        return b.call(fn, [x, y, z])

    def masked_load(self, b: ir.IRBuilder, p: ir.Value, mask: ir.Value, n: int) -> ir.Value:
        # The 4-operand form (explicit alignment) is auto-upgraded by LLVM 22's parser.
        v = self.vec(n)
        fn = self.intrinsic(f"llvm.masked.load.{self.suffix(n)}.p0", v,
                            [v.as_pointer(), _I32, mask.type, v])
        return b.call(fn, [b.bitcast(p, v.as_pointer()), _I32(self.size), mask, v(None)])

    def masked_store(self, b: ir.IRBuilder, x: ir.Value, p: ir.Value, mask: ir.Value) -> None:
        v = x.type
        fn = self.intrinsic(f"llvm.masked.store.{self.suffix(v.count)}.p0", ir.VoidType(),
                            [v, v.as_pointer(), _I32, mask.type])
        b.call(fn, [x, b.bitcast(p, v.as_pointer()), _I32(self.size), mask])

    def load(self, b: ir.IRBuilder, p: ir.Value, n: int, align: int) -> ir.Value:
        return b.load(b.bitcast(p, self.vec(n).as_pointer()), align=align)

    def store(self, b: ir.IRBuilder, x: ir.Value, p: ir.Value, align: int) -> None:
        b.store(x, b.bitcast(p, x.type.as_pointer()), align=align)

    def splat(self, b: ir.IRBuilder, x: ir.Value, n: int) -> ir.Value:
        one = b.insert_element(ir.VectorType(x.type, n)(ir.Undefined), x, _I32(0))
        return b.shuffle_vector(one, one.type(ir.Undefined), ir.VectorType(_I32, n)([0] * n))

    def lane_mask(self, b: ir.IRBuilder, first: int, limit: ir.Value, n: int) -> ir.Value:
        """<n x i1>: lane j is on when first + j < limit (signed)."""
        idx = ir.VectorType(_I64, n)([first + j for j in range(n)])
        return b.icmp_signed("<", idx, self.splat(b, limit, n))

    @staticmethod
    def gep(b: ir.IRBuilder, p: ir.Value, off: ir.Value | int) -> ir.Value:
        return b.gep(p, [off if isinstance(off, ir.Value) else _I64(off)])

    @staticmethod
    def min(b: ir.IRBuilder, x: ir.Value, y: ir.Value | int) -> ir.Value:
        y = y if isinstance(y, ir.Value) else _I64(y)
        return b.select(b.icmp_signed("<", x, y), x, y)

    @staticmethod
    @contextlib.contextmanager
    def loop(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value, step: ir.Value | int,
             name: str) -> Iterator[ir.Value]:
        """for (i = start; i < stop; i += step): the body is emitted inside the with-block."""
        start = start if isinstance(start, ir.Value) else _I64(start)
        step = step if isinstance(step, ir.Value) else _I64(step)
        pre = b.block
        head = b.append_basic_block(f"{name}.head")
        body = b.append_basic_block(f"{name}.body")
        done = b.append_basic_block(f"{name}.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(_I64, name)
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        yield i
        i.add_incoming(b.add(i, step), b.block)
        b.branch(head)
        b.position_at_end(done)

    @staticmethod
    @contextlib.contextmanager
    def k_blocks(b: ir.IRBuilder, stop: ir.Value, step: ir.Value | int, name: str) -> Iterator[ir.Value]:
        """do { ... } while ((k += step) < stop): K blocks, run once when K = 0 (which zeroes C)."""
        step = step if isinstance(step, ir.Value) else _I64(step)
        pre = b.block
        body, done = _blocks(b.function, f"{name}.body", f"{name}.done")
        b.branch(body)
        b.position_at_end(body)
        k = b.phi(_I64, name)
        k.add_incoming(_I64(0), pre)
        yield k
        k_next = b.add(k, step)
        k.add_incoming(k_next, b.block)
        b.cbranch(b.icmp_signed("<", k_next, stop), body, done)
        b.position_at_end(done)

    def function(self, name: str, args: list[ir.Type], names: list[str],
                 linkage: str = "internal") -> tuple[ir.Function, ir.IRBuilder, list[ir.Value]]:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), args), name)
        fn.linkage = linkage
        for a, n in zip(fn.args, names, strict=True):
            a.name = n
            if isinstance(a.type, ir.PointerType):
                a.add_attribute("noalias")
        return fn, ir.IRBuilder(fn.append_basic_block("entry")), list(fn.args)

    # -- micro-kernels ---------------------------------------------------------------------

    def k_loop(self, b: ir.IRBuilder, stop: ir.Value, rows: int, cols: int
               ) -> tuple[ir.Value, list[list[ir.Value]], ir.Block, ir.Block]:
        """Open `for (k = 0; k < stop;)` over a rows×cols tile of vector accumulators (loop phis,
        zero on entry) and position `b` in its body. Returns (k, acc, head, tail): the caller adds
        the body's next k and accumulators as incoming values, branches back to head and goes
        on at tail."""
        pre = b.block
        head, body, tail = _blocks(b.function, "k.head", "k.body", "k.tail")
        b.branch(head)
        b.position_at_end(head)
        k = b.phi(_I64, "k")
        k.add_incoming(_I64(0), pre)
        vt = self.vec(self.blk.lanes)
        acc = [[b.phi(vt, f"c{i}_{j}") for j in range(cols)] for i in range(rows)]
        for row in acc:
            for a in row:
                a.add_incoming(vt(None), pre)
        b.cbranch(b.icmp_signed("<", k, stop), body, tail)
        b.position_at_end(body)
        return k, acc, head, tail

    def micro(self, a_kmajor: bool, b_packed: bool = True) -> ir.Function:
        """micro(kc, pa, ldpa, pb, ldpb, c, ldc, mr, nr, load_c): C[0:mr, 0:nr] (+)= A·B over kc.

        The MR×NR accumulator tile lives in vector registers as loop phis; A values are
        broadcast from A's strip (folded into the FMA's memory operand by the backend), which is
        k-major (A[i, k] at pa[k·MR + i], packed) or row-major (at pa[i·ldpa + k]: packed, ldpa =
        KC, or A itself). Row k of B's strip is at pb + k·ldpb: a packed strip (ldpb = NR, aligned
        loads) or, unpacked, B itself.
        """
        name = (f"graphc_gemm_{self.dtype}_micro{self.blk.mr}x{self.blk.nr}_{'k' if a_kmajor else 'r'}"
                f"{'' if b_packed else '_b'}")
        if name in self.module.globals:
            return self.module.globals[name]
        blk, L = self.blk, self.blk.lanes
        nv = blk.nr // L
        fn, b, (kc, pa, ldpa, pb, ldpb, c, ldc, mr, nr, load_c) = self.function(
            name, [_I64, self.ptr, _I64, self.ptr, _I64, self.ptr, _I64, _I64, _I64, _I1],
            ["kc", "pa", "ldpa", "pb", "ldpb", "c", "ldc", "mr", "nr", "load_c"])
        k, acc, head, tail = self.k_loop(b, kc, blk.mr, nv)
        body = b.block
        pbk = self.gep(b, pb, b.mul(k, ldpb))
        align = L * self.size if b_packed else self.size
        bv = [self.load(b, self.gep(b, pbk, v * L), L, align) for v in range(nv)]
        pak = self.gep(b, pa, b.mul(k, _I64(blk.mr)) if a_kmajor else k)
        for i in range(blk.mr):
            ai = self.gep(b, pak, i if a_kmajor else b.mul(_I64(i), ldpa))
            ai = self.splat(b, b.load(ai, align=self.size), L)
            for v in range(nv):
                acc[i][v].add_incoming(self.fmuladd(b, ai, bv[v], acc[i][v]), body)
        k.add_incoming(b.add(k, _I64(1)), body)
        b.branch(head)

        # Write-back: full tiles use plain unaligned vector access, edge tiles masked access
        # (never touching memory outside C) and skip rows past mr.
        b.position_at_end(tail)
        full = b.and_(b.icmp_signed("==", mr, _I64(blk.mr)),
                      b.icmp_signed("==", nr, _I64(blk.nr)))
        full_bb, edge_bb = _blocks(fn, "full", "edge")
        rows = [self.gep(b, c, b.mul(_I64(i), ldc)) for i in range(blk.mr)]
        b.cbranch(full, full_bb, edge_bb)
        add_bb, set_bb = _blocks(fn, "full.add", "full.set")
        b.position_at_end(full_bb)
        b.cbranch(load_c, add_bb, set_bb)
        for accumulate, bb in ((True, add_bb), (False, set_bb)):
            b.position_at_end(bb)
            for i in range(blk.mr):
                for v in range(nv):
                    p = self.gep(b, rows[i], v * L)
                    x = acc[i][v]
                    if accumulate:
                        x = b.fadd(x, self.load(b, p, L, self.size))
                    self.store(b, x, p, self.size)
            b.ret_void()

        b.position_at_end(edge_bb)
        masks = [self.lane_mask(b, v * L, nr, L) for v in range(nv)]
        on = b.select(load_c, ir.VectorType(_I1, L)([1] * L), ir.VectorType(_I1, L)([0] * L))
        load_masks = [b.and_(m, on) for m in masks]
        for i in range(blk.mr):
            row_bb, next_bb = fn.append_basic_block(f"edge.{i}"), fn.append_basic_block()
            b.cbranch(b.icmp_signed("<", _I64(i), mr), row_bb, next_bb)
            b.position_at_end(row_bb)
            for v in range(nv):
                p = self.gep(b, rows[i], v * L)
                # With load_c off the load mask is empty: the add sees zeros, C is not read.
                x = b.fadd(acc[i][v], self.masked_load(b, p, load_masks[v], L))
                self.masked_store(b, x, p, masks[v])
            b.branch(next_bb)
            b.position_at_end(next_bb)
        b.ret_void()
        return fn

    # -- packing ---------------------------------------------------------------------------

    def pack(self, width: int, kind: str) -> ir.Function:
        """pack(src, ld, extent, kc, dst): pack a kc×extent panel P into width-wide strips.

        Strip s holds columns [s·width, s·width + width) of P, zero past `extent`, at
        dst + s·width·KC, either k-major (for each k, `width` contiguous values) or row-major
        (for each column j, KC slots holding P[0:kc, j]). Kinds:
        "copy": P[k, j] = src[k·ld + j], k-major;  "transpose": P[k, j] = src[j·ld + k], k-major;
        "rows": P[k, j] = src[j·ld + k], row-major (a transpose for free: contiguous copies).
        """
        name = f"graphc_gemm_{self.dtype}_pack_{kind}{width}"
        if name in self.module.globals:
            return self.module.globals[name]
        blk = self.blk
        fn, b, (src, ld, extent, kc, dst) = self.function(
            name, [self.ptr, _I64, _I64, _I64, self.ptr], ["src", "ld", "extent", "kc", "dst"])
        with self.loop(b, 0, extent, width, "s") as s0:
            w = self.min(b, b.sub(extent, s0), width)
            dst_s = self.gep(b, dst, b.mul(s0, _I64(blk.kc)))
            if kind == "copy":
                self._pack_copy_strip(b, self.gep(b, src, s0), ld, w, kc, dst_s, width,
                                      _pack_lanes(width, blk.lanes))
            else:
                src_s = self.gep(b, src, b.mul(s0, ld))
                self._pack_kblocks(b, src_s, ld, w, kc, dst_s, width, transpose=kind == "transpose")
        b.ret_void()
        return fn

    def _pack_copy_strip(self, b: ir.IRBuilder, src: ir.Value, ld: ir.Value, w: ir.Value,
                         kc: ir.Value, dst: ir.Value, width: int, P: int) -> None:
        fn = b.function
        full_bb, part_bb, done = _blocks(fn, "copy.full", "copy.part", "copy.done")
        b.cbranch(b.icmp_signed("==", w, _I64(width)), full_bb, part_bb)
        for masked, bb in ((False, full_bb), (True, part_bb)):
            b.position_at_end(bb)
            masks = [self.lane_mask(b, g * P, w, P) for g in range(width // P)] if masked else []
            with self.loop(b, 0, kc, 1, "copy.k") as k:
                row, out = self.gep(b, src, b.mul(k, ld)), self.gep(b, dst, b.mul(k, _I64(width)))
                for g in range(width // P):
                    p = self.gep(b, row, g * P)
                    if masked:
                        x = self.masked_load(b, p, masks[g], P)
                    else:
                        x = self.load(b, p, P, self.size)
                    self.store(b, x, self.gep(b, out, g * P), P * self.size)
            b.branch(done)
        b.position_at_end(done)

    def _pack_kblocks(self, b: ir.IRBuilder, src: ir.Value, ld: ir.Value, w: ir.Value,
                      kc: ir.Value, dst: ir.Value, width: int, transpose: bool) -> None:
        # Source rows j (k contiguous) are read L values of k at a time. "rows" copies them;
        # "transpose" turns each L×L block in registers into L k-major rows, in groups of L rows
        # (bounding register use) that each sweep K once: a wide strip's rows at once would
        # overflow L1's ways when the row stride is a multiple of 4 KiB (48 rows: 1.5x slower).
        if not transpose:
            self._pack_group(b, src, ld, w, kc, dst, width, width, transpose)
            return
        L = self.blk.lanes
        with self.loop(b, 0, _I64(width), L, "g") as g:
            self._pack_group(b, self.gep(b, src, b.mul(g, ld)), ld, b.sub(w, g), kc,
                             self.gep(b, dst, g), L, width, transpose)

    def _pack_group(self, b: ir.IRBuilder, src: ir.Value, ld: ir.Value, w: ir.Value,
                    kc: ir.Value, dst: ir.Value, rows: int, width: int, transpose: bool) -> None:
        # Writes run up to kc rounded up to L, which stays inside the strip (KC % L == 0), and are
        # zero past kc and past the w rows present.
        fn, L = b.function, self.blk.lanes
        with self.loop(b, 0, kc, L, "kb") as kb:
            kr = b.sub(kc, kb)
            full_bb, part_bb, done = _blocks(fn, "kb.full", "kb.part", "kb.done")
            full = b.and_(b.icmp_signed(">=", w, _I64(rows)), b.icmp_signed(">=", kr, _I64(L)))
            b.cbranch(full, full_bb, part_bb)
            for masked, bb in ((False, full_bb), (True, part_bb)):
                b.position_at_end(bb)
                if masked:
                    kmask = self.lane_mask(b, 0, kr, L)
                    off = ir.VectorType(_I1, L)([0] * L)
                xs = []
                for j in range(rows):
                    p = self.gep(b, src, b.add(b.mul(_I64(j), ld), kb))
                    if masked:
                        m = b.select(b.icmp_signed("<", _I64(j), w), kmask, off)
                        xs.append(self.masked_load(b, p, m, L))
                    else:
                        xs.append(self.load(b, p, L, self.size))
                if transpose:
                    for t, x in enumerate(_transpose(b, xs)):
                        out = self.gep(b, dst, b.mul(b.add(kb, _I64(t)), _I64(width)))
                        self.store(b, x, out, L * self.size)
                else:
                    for j, x in enumerate(xs):
                        out = self.gep(b, dst, b.add(_I64(j * self.blk.kc), kb))
                        self.store(b, x, out, L * self.size)
                b.branch(done)
            b.position_at_end(done)

    # -- driver ----------------------------------------------------------------------------

    def dot_range(self, name: str) -> ir.Function:
        """The dot-product GEMM (C = A·Bᵀ, see `dot_blocking`) over output columns [n0, n1), with
        the range function's signature (`scratch` unused). Per K block and MR×NR tile of C: MR rows
        of A and NR rows of B load L values of k at a time (the block's last partial vector masked)
        into MR·NR vector accumulators, summed across lanes into C; an edge tile reads its last row
        or column again for the missing ones and stores only its own."""
        blk, L = self.blk, self.blk.lanes
        fn, b, (M, N, K, A, lda, B, ldb, C, ldc, accumulate, n0, n1, _) = self.function(
            f"{name}_range", [*self.gemm_args, _I64, _I64, _I8P], [*_GEMM_NAMES, "n0", "n1", "scratch"],
            linkage="external")
        vt = self.vec(L)
        hsum = self.intrinsic(f"llvm.vector.reduce.fadd.{self.suffix(L)}", self.t, [self.t, vt])
        # K blocks of KC, whose rows of A and B stay in L2 (a long K's would stream from L3 once per
        # tile); in a block, each MR rows of A (in L1) meet every NR rows of B (docs/perf.md)
        with self.k_blocks(b, K, blk.kc, "kb") as kb:
            kn = self.min(b, b.sub(K, kb), blk.kc)
            full_k = b.mul(b.sdiv(kn, _I64(L)), _I64(L))
            # C is added to from the second block on, or from the first when accumulating
            load_c = b.or_(b.icmp_signed("!=", accumulate, _I32(0)), b.icmp_signed("!=", kb, _I64(0)))
            with self.loop(b, 0, M, blk.mr, "it") as i0:
                with self.loop(b, n0, n1, blk.nr, "jt") as j0:
                    # row r (at most `last`) of a matrix, from the block's first k
                    at = lambda p, r, last, ld: self.gep(b, p, b.add(b.mul(self.min(b, r, last), ld), kb))
                    rows = [at(A, b.add(i0, _I64(i)), b.sub(M, _I64(1)), lda) for i in range(blk.mr)]
                    cols = [at(B, b.add(j0, _I64(j)), b.sub(n1, _I64(1)), ldb) for j in range(blk.nr)]
                    k, acc, head, tail = self.k_loop(b, full_k, blk.mr, blk.nr)
                    body = b.block

                    def step(load):
                        av = [load(r) for r in rows]
                        bv = [load(c) for c in cols]
                        return [[self.fmuladd(b, av[i], bv[j], acc[i][j]) for j in range(blk.nr)]
                                for i in range(blk.mr)]
                    new = step(lambda p: self.load(b, self.gep(b, p, k), L, self.size))
                    k.add_incoming(b.add(k, _I64(L)), body)
                    for row, xs in zip(acc, new):
                        for x, v in zip(row, xs):
                            x.add_incoming(v, body)
                    b.branch(head)
                    b.position_at_end(tail)  # the block's last kn % L values, masked (zeros past K)
                    mask = self.lane_mask(b, 0, b.sub(kn, full_k), L)
                    last = step(lambda p: self.masked_load(b, self.gep(b, p, full_k), mask, L))
                    for i in range(blk.mr):
                        for j in range(blk.nr):
                            inside = b.and_(b.icmp_signed("<", b.add(i0, _I64(i)), M),
                                            b.icmp_signed("<", b.add(j0, _I64(j)), n1))
                            with b.if_then(inside):
                                total = b.call(hsum, [ir.Constant(self.t, 0.0), last[i][j]])
                                total.fastmath.add("reassoc")  # a tree across lanes
                                p = self.gep(b, C, b.add(b.mul(b.add(i0, _I64(i)), ldc), b.add(j0, _I64(j))))
                                old = b.select(load_c, b.load(p), ir.Constant(self.t, 0.0))
                                b.store(b.fadd(old, total), p)
        b.ret_void()
        return fn

    def range_fn(self, name: str, trans_a: bool, trans_b: bool) -> ir.Function:
        """The GEMM over output columns [n0, n1), packing into `scratch` (see module doc)."""
        blk = self.blk
        # Plain A (M×K) is read in place or packed row-major by contiguous copies, Aᵀ (K×M) packed
        # k-major: neither needs a transpose since the micro-kernel reads A by scalar broadcasts
        # at either layout.
        micro = self.micro(a_kmajor=trans_a)
        # B unpacked: the whole NR strips of a plain B feeding at most `direct_m` rows of C are read
        # in place (packing them would cost more than the few micro-tiles that reuse them)
        direct = None if trans_b else self.micro(a_kmajor=trans_a, b_packed=False)
        pack_a = self.pack(blk.mr, "copy" if trans_a else "rows")
        pack_b = self.pack(blk.nr, "transpose" if trans_b else "copy")
        fn, b, (M, N, K, A, lda, B, ldb, C, ldc, accumulate, n0, n1, scratch) = self.function(
            f"{name}_range", [*self.gemm_args, _I64, _I64, _I8P], [*_GEMM_NAMES, "n0", "n1", "scratch"],
            linkage="external")
        pa = b.bitcast(scratch, self.ptr)  # MC×KC of A, then KC×NC of B (both multiples of 16)
        pb = self.gep(b, pa, blk.mc * blk.kc)
        # Balanced K blocks (784 -> 4×~196, not 3×256 + 16), each rounded up to a multiple of 16
        # so transposing packs read whole vectors; K = 0 gives one empty block, which zeroes C.
        nkb = b.sdiv(b.add(K, _I64(blk.kc - 1)), _I64(blk.kc))
        nkb = b.select(b.icmp_signed(">", nkb, _I64(0)), nkb, _I64(1))
        kstep = b.sdiv(b.add(K, b.sub(nkb, _I64(1))), nkb)
        kstep = b.and_(b.add(kstep, _I64(15)), _I64(-16))
        kstep = self.min(b, kstep, blk.kc)
        accumulating = b.icmp_signed("!=", accumulate, _I32(0))
        # A (not Aᵀ) is read in place unless its rows are a multiple of 2 KiB apart, where 16 rows
        # would share a few of L1's sets (packed, they are KC = 1 KiB apart, as 256-float rows are)
        a_in_place = _I1(0) if trans_a else b.icmp_signed(
            "!=", b.and_(b.mul(lda, _I64(self.size)), _I64(2047)), _I64(0))
        with self.loop(b, n0, n1, blk.nc, "jc") as jc:
            nc = self.min(b, b.sub(n1, jc), blk.nc)
            with self.k_blocks(b, K, kstep, "pc") as pc:
                kc = self.min(b, b.sub(K, pc), kstep)
                b_off = b.add(b.mul(jc, ldb), pc) if trans_b else b.add(b.mul(pc, ldb), jc)
                b_src = self.gep(b, B, b_off)
                # columns [0, packed) are read in place, [packed, nc) packed (a partial strip at most)
                packed = _I64(0) if direct is None else b.select(
                    b.icmp_signed("<=", M, _I64(self.tune.direct_m)), b.sub(nc, b.srem(nc, _I64(blk.nr))), _I64(0))
                with b.if_then(b.icmp_signed("<", packed, nc)):
                    b.call(pack_b, [self.gep(b, b_src, packed), ldb, b.sub(nc, packed), kc,
                                    self.gep(b, pb, b.mul(packed, _I64(blk.kc)))])
                load_c = b.or_(accumulating, b.icmp_signed("!=", pc, _I64(0)))
                with self.loop(b, 0, M, blk.mc, "ic") as ic:
                    mc = self.min(b, b.sub(M, ic), blk.mc)
                    a_off = b.add(b.mul(pc, lda), ic) if trans_a else b.add(b.mul(ic, lda), pc)
                    a_src = self.gep(b, A, a_off)
                    # the micro-kernel reads all MR rows of a strip: a partial one is packed (zero-padded)
                    in_place = b.and_(a_in_place, b.icmp_signed("==", b.srem(mc, _I64(blk.mr)), _I64(0)))
                    with b.if_then(b.not_(in_place)):
                        b.call(pack_a, [a_src, lda, mc, kc, pa])
                    a_strip, lda_strip = b.select(in_place, a_src, pa), b.select(in_place, lda, _I64(blk.kc))
                    with self.loop(b, 0, nc, blk.nr, "jr") as jr:
                        nr = self.min(b, b.sub(nc, jr), blk.nr)
                        pbj = self.gep(b, pb, b.mul(jr, _I64(blk.kc)))
                        cj = self.gep(b, C, b.add(b.mul(ic, ldc), b.add(jc, jr)))
                        with self.loop(b, 0, mc, blk.mr, "ir") as ir_:
                            mr = self.min(b, b.sub(mc, ir_), blk.mr)
                            args = [kc, self.gep(b, a_strip, b.mul(ir_, lda_strip)), lda_strip]
                            rest = [self.gep(b, cj, b.mul(ir_, ldc)), ldc, mr, nr, load_c]
                            if direct is None:
                                b.call(micro, args + [pbj, _I64(blk.nr)] + rest)
                            else:
                                with b.if_else(b.icmp_signed("<", jr, packed)) as (then, otherwise):
                                    with then:
                                        b.call(direct, args + [self.gep(b, b_src, jr), ldb] + rest)
                                    with otherwise:
                                        b.call(micro, args + [pbj, _I64(blk.nr)] + rest)
        b.ret_void()
        return fn


def _blocks(fn: ir.Function, *names: str) -> list[ir.Block]:
    return [fn.append_basic_block(n) for n in names]


def _transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """Transpose n vectors of n lanes (n a power of two) with log2(n) shufflevector stages.

    Stage d swaps, for each row pair (i, i+d) with bit d clear in i, the elements whose column
    has bit d set in row i with those whose column has it clear in row i+d; after all stages
    element (i, j) has moved to (j, i).
    """
    rows, n, d = list(rows), len(rows), 1
    lo_t = ir.VectorType(_I32, n)
    while d < n:
        lo = lo_t([j if not j & d else n + j - d for j in range(n)])
        hi = lo_t([j + d if not j & d else n + j for j in range(n)])
        for i in range(n):
            if not i & d:
                x, y = rows[i], rows[i | d]
                rows[i], rows[i | d] = b.shuffle_vector(x, y, lo), b.shuffle_vector(x, y, hi)
        d *= 2
    return rows


def define_gemm(module: ir.Module, target: Target, dtype: str, trans_a: bool,
                trans_b: bool, shape: tuple[int, int] | None = None, k: int | None = None) -> ir.Function:
    """Define (once per module) `graphc_gemm_{dtype}_{ta}{tb}_{MR}x{NR}`:

    void(i64 M, i64 N, i64 K, T* A, i64 lda, T* B, i64 ldb, T* C, i64 ldc, i32 accumulate,
         i8* scratch)
    computes C[M,N] = op(A)·op(B), or C += op(A)·op(B) when accumulate != 0. All matrices are
    row-major with the given row strides; op(A) = A (stored M×K) or Aᵀ (stored K×M), op(B) = B
    (stored K×N) or Bᵀ (stored N×K). K = 0 zeroes C (unless accumulating); M or N = 0 is a no-op.
    C must not overlap A or B (A and B may overlap each other). `scratch` holds the packed panels:
    `scratch_bytes(target, dtype)` bytes, 64-byte aligned, used by one call at a time.
    The tile is `gemm_blocking`'s for `shape`, the (M, N) the kernel is made for, and `k`, its K
    (None: any), though it computes any M, N and K correctly. One target per module: helpers
    are shared by name across variants and tiles.
    """
    blk = gemm_blocking(target, dtype, trans_a, trans_b, shape, k)
    name = (f"graphc_gemm_{dtype}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}_"
            f"{'dot' if blk.dot else ''}{blk.mr}x{blk.nr}")
    if name in module.globals:
        return module.globals[name]
    g = _Gen(module, target, dtype, blk)
    rng = g.dot_range(name) if blk.dot else g.range_fn(name, trans_a, trans_b)
    fn, b, args = g.function(name, [*g.gemm_args, _I8P], [*_GEMM_NAMES, "scratch"], linkage="external")
    M, N = args[0], args[1]
    work, done = _blocks(fn, "work", "done")
    b.cbranch(b.and_(b.icmp_signed(">", M, _I64(0)), b.icmp_signed(">", N, _I64(0))), work, done)
    b.position_at_end(work)
    b.call(rng, [*args[:-1], _I64(0), N, args[-1]])
    b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return fn
