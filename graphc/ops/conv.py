"""Convolution and pooling over NCHW images, built on one gather: `window` (im2col) and its adjoint.

- `window(x)` lays out every kernel-sized patch of x: [N,C,H,W] -> [C,KH,KW,N,OH,OW], an elementwise
  gather through affine index maps (padding reads `value`). Its [C*KH*KW, N*OH*OW] reshape is the
  transposed im2col matrix, so a convolution is one GEMM with the weights whose B operand is read
  row by row; pixels are innermost, so the gather walks the image's rows and vectorizes. Pooling
  is a reduction over axes 1 and 2, fused into the gather so patches are never written out.
- `fold(g)` is window's adjoint (col2im): each pixel sums the patch entries that read it. It lowers
  to a gather of those taps (`fold_taps`, pixels innermost again) and a sum, so it needs no scatter.
- conv2d, max_pool2d, avg_pool2d and global_avg_pool decompose into window, matmul, fold, reductions
  and transposes after autodiff; their vjps are written with the same ops.
"""

from __future__ import annotations

import math

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Affine, Decompose, Elementwise
from graphc.ops.registry import OpDef, Trait, float_type, is_int, register, require, show, sum_to


def _pair(v, name: str) -> tuple[int, int]:
    p = (v, v) if is_int(v) else v
    require(isinstance(p, tuple) and len(p) == 2 and all(is_int(i) for i in p),
            f"{name} must be a whole number or two of them, got {show(v)}")
    return p


def geometry(attrs) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation), each as (rows, cols)."""
    k, s, p, d = (_pair(attrs[a], a) for a in ("kernel", "stride", "padding", "dilation"))
    require(min(*k, *s, *d) >= 1 and min(p) >= 0, f"bad window geometry kernel={k} stride={s} "
            f"padding={p} dilation={d}")
    return k, s, p, d


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    n = (size + 2 * p - d * (k - 1) - 1) // s + 1
    require(n >= 1, f"a {k}-wide window (dilation {d}) does not fit {size} pixels padded by {p}")
    return n


def _image(t: TensorType, what: str = "input") -> None:
    float_type(t, what)
    require(t.rank == 4, f"{what} must be an NCHW image batch T[N,C,H,W], got {t}")
    require(all(isinstance(d, int) for d in t.shape[1:]), f"C, H, W of {t} must be known")


_WINDOW = {"stride": 1, "padding": 0, "dilation": 1}


# ---- window (im2col) and fold (col2im) ----

def _window_shape(ts, attrs):
    x = ts[0]
    _image(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry(attrs)
    n, c, h, w = x.shape
    return TensorType(x.dtype, (c, kh, kw, n, _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)))


def _window_maps(ts, out, attrs):
    _, (sh, sw), (ph, pw), (dh, dw) = geometry(attrs)
    return [(3, 0, Affine(((4, sh), (1, dh)), -ph), Affine(((5, sw), (2, dw)), -pw))]


def _window_ref(x, kernel, stride, padding, dilation, value):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry(
        {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation})
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)
    out = np.empty((c, kh, kw, n, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out[:, i, j] = patch.transpose(1, 0, 2, 3)
    return out


def _geo(attrs) -> dict:
    return {a: attrs[a] for a in ("kernel", "stride", "padding", "dilation")}


register(OpDef(
    "window", 1, _window_shape,
    lambda b, n, g: [b.fold(g, size=tuple(n.inputs[0].shape[2:]), **_geo(n.attrs))],
    _window_ref,
    Elementwise(lambda s, x, **attrs: x, _window_maps, fill=lambda attrs: attrs["value"]),
    {**_WINDOW, "value": 0.0},
    "x: T[N,C,H,W], kernel, stride=1, padding=0, dilation=1, value=0 -> T[C,KH,KW,N,OH,OW]: every "
    "patch (transposed im2col); padding reads `value`"))


def _fold_shape(ts, attrs):
    g = ts[0]
    float_type(g)
    require(g.rank == 6, f"patches must be T[C,KH,KW,N,OH,OW], got {g}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry(attrs)
    h, w = _pair(attrs["size"], "size")
    c, gkh, gkw, n, oh, ow = g.shape
    require(gkh in (1, kh) and gkw in (1, kw)
            and (oh, ow) == (_out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)),
            f"patches {g} do not match a {kh}x{kw} window over {h}x{w} pixels")
    return TensorType(g.dtype, (n, c, h, w))


register(OpDef(
    "fold", 1, _fold_shape,
    lambda b, n, g: [sum_to(b, b.window(g, **_geo(n.attrs)), n.inputs[0].shape)],
    # every tap that reads a pixel, summed (window's vjp test checks this against window's ref)
    lambda g, size, kernel, stride, padding, dilation: _taps_ref(
        g, size, kernel, stride, padding, dilation).sum(axis=(2, 3)),
    Decompose(lambda b, g, **attrs: b.sum(b.fold_taps(g, **attrs), axes=(2, 3))),
    _WINDOW,
    "g: T[C,KH,KW,N,OH,OW], size=[H,W], kernel, stride=1, padding=0, dilation=1 -> T[N,C,H,W]: the "
    "adjoint of window (col2im), each pixel sums the patch entries that read it (KH, KW may be 1: "
    "one value for the whole patch)"))


def _taps_shape(ts, attrs):
    n, c, h, w = _fold_shape(ts, attrs).shape
    return TensorType(ts[0].dtype, (n, c, *_pair(attrs["kernel"], "kernel"), h, w))


def _taps_maps(ts, out, attrs):
    _, (sh, sw), (ph, pw), (dh, dw) = geometry(attrs)
    # pixel h is read by tap i of patch oh where oh * sh + i * dh - ph == h
    taps = tuple(None if d == 1 else a for a, d in zip((2, 3), ts[0].shape[1:3]))  # 1: one value per patch
    return [(1, *taps, 0, Affine(((4, 1), (2, -dh)), ph, sh), Affine(((5, 1), (3, -dw)), pw, sw))]


def _taps_ref(g, size, kernel, stride, padding, dilation):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry(
        {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation})
    c, _, _, n, oh, ow = g.shape
    g = np.broadcast_to(g, (c, kh, kw, n, oh, ow))
    h, w = _pair(size, "size")
    out = np.zeros((n, c, kh, kw, h, w), g.dtype)
    for i in range(kh):
        for j in range(kw):
            th, tw = np.arange(h) + ph - i * dh, np.arange(w) + pw - j * dw
            vh = (th >= 0) & (th % sh == 0) & (th // sh < oh)
            vw = (tw >= 0) & (tw % sw == 0) & (tw // sw < ow)
            hs, ws = np.nonzero(vh)[0], np.nonzero(vw)[0]
            taps = g[:, i, j][:, :, th[hs] // sh][..., tw[ws] // sw]  # [C, N, |hs|, |ws|]
            out[:, :, i, j, hs[:, None], ws[None, :]] = taps.transpose(1, 0, 2, 3)
    return out


register(OpDef(
    "fold_taps", 1, _taps_shape, None, _taps_ref,
    Elementwise(lambda s, g, **attrs: g, _taps_maps), _WINDOW,
    "g: T[C,KH,KW,N,OH,OW], size, kernel, ... -> T[N,C,KH,KW,H,W]: for each pixel, the patch entries "
    "that read it (0 where none); internal to fold, after autodiff"))


# ---- convolution ----

def _conv_geo(x, w, attrs) -> dict:
    return {"kernel": tuple(w.shape[2:]), "stride": attrs["stride"], "padding": attrs["padding"],
            "dilation": attrs["dilation"]}


def _conv_shape(ts, attrs):
    x, w = ts
    _image(x)
    float_type(w, "weight")
    require(w.rank == 4 and all(isinstance(d, int) for d in w.shape),
            f"weight must be T[C_out, C_in/groups, KH, KW], got {w}")
    require(x.dtype == w.dtype, f"dtypes differ: {x} and {w}")
    groups = attrs["groups"]
    require(isinstance(groups, int) and groups >= 1, f"groups must be a positive int, got {groups}")
    co, ci = w.shape[:2]
    require(x.shape[1] == ci * groups, f"input has {x.shape[1]} channels; weight {w} with groups={groups} "
            f"expects {ci * groups}")
    require(co % groups == 0, f"{co} output channels do not split into {groups} groups")
    *_, n, oh, ow = _window_shape([x], {**_conv_geo(x, w, attrs), "value": 0.0}).shape
    return TensorType(x.dtype, (n, co, oh, ow))


def _cols(b, x, w, attrs):
    """The transposed im2col matrix of x: [C*KH*KW, N*OH*OW], one column per output pixel."""
    win = b.window(x, **_conv_geo(x, w, attrs))
    return b.reshape(win, shape=(math.prod(win.shape[:3]), math.prod(win.shape[3:]))), win.shape


def _conv1(b, x, w, attrs):
    """One group: y[Co, N*OH*OW] = W[Co, C*KH*KW] @ cols, so the GEMM's long dimension is the pixels."""
    cols, (*_, n, oh, ow) = _cols(b, x, w, attrs)
    co = w.shape[0]
    y = b.matmul(b.reshape(w, shape=(co, cols.shape[0])), cols)
    return b.transpose(b.reshape(y, shape=(co, n, oh, ow)), perm=(1, 0, 2, 3))


def _conv1_vjp(b, x, w, g, attrs):
    cols, wshape = _cols(b, x, w, attrs)
    co = w.shape[0]
    gt = b.reshape(b.transpose(g, perm=(1, 0, 2, 3)), shape=(co, cols.shape[1]))
    dw = b.reshape(b.matmul(gt, cols, tb=True), shape=tuple(w.shape))
    dcols = b.matmul(b.reshape(w, shape=(co, cols.shape[0])), gt, ta=True)
    dx = b.fold(b.reshape(dcols, shape=wshape), size=tuple(x.shape[2:]), **_conv_geo(x, w, attrs))
    return dx, dw


def _groups(b, x, w, groups):
    """Per group: its input channels and its weights."""
    ci, cog = w.shape[1], w.shape[0] // groups
    return [(b.slice(x, axis=1, start=i * ci, stop=(i + 1) * ci),
             b.slice(w, axis=0, start=i * cog, stop=(i + 1) * cog)) for i in range(groups)]


def _concat(b, vs, axis):
    out = vs[0]
    for v in vs[1:]:
        out = b.concat(out, v, axis=axis)
    return out


def _conv(b, x, w, **attrs):
    if attrs["groups"] == 1:
        return _conv1(b, x, w, attrs)
    return _concat(b, [_conv1(b, xg, wg, attrs) for xg, wg in _groups(b, x, w, attrs["groups"])], 1)


def _conv_vjp(b, n, g):
    x, w = n.inputs
    groups = n.attrs["groups"]
    if groups == 1:
        return list(_conv1_vjp(b, x, w, g, n.attrs))
    cog = w.shape[0] // groups
    parts = [_conv1_vjp(b, xg, wg, b.slice(g, axis=1, start=i * cog, stop=(i + 1) * cog), n.attrs)
             for i, (xg, wg) in enumerate(_groups(b, x, w, groups))]
    return [_concat(b, [p[0] for p in parts], 1), _concat(b, [p[1] for p in parts], 0)]


def _conv_ref(x, w, stride, padding, dilation, groups):
    co, ci, kh, kw = w.shape
    win = _window_ref(x, (kh, kw), stride, padding, dilation, 0.0)  # [C,KH,KW,N,OH,OW]
    n, oh, ow = win.shape[3:]
    win = win.reshape(groups, ci, kh, kw, n, oh, ow)
    y = np.einsum("gcijnhw,gocij->ngohw", win, w.reshape(groups, co // groups, ci, kh, kw))
    return y.reshape(n, co, oh, ow).astype(x.dtype)


register(OpDef(
    "conv2d", 2, _conv_shape, _conv_vjp, _conv_ref, Decompose(_conv),
    {**_WINDOW, "groups": 1},
    "x: T[N,C,H,W], w: T[Co,C/groups,KH,KW], stride=1, padding=0, dilation=1, groups=1 -> "
    "T[N,Co,OH,OW] (cross-correlation, as in PyTorch); OH = (H+2*padding-dilation*(KH-1)-1)/stride+1"))


# ---- pooling ----

_POOL = {"stride": None, "padding": 0}


def pool_window(attrs) -> dict:
    """A pooling op's window attributes: its stride defaults to the kernel; no dilation."""
    stride = attrs["kernel"] if attrs["stride"] is None else attrs["stride"]
    return {"kernel": attrs["kernel"], "stride": stride, "padding": attrs["padding"], "dilation": 1}


def _pool_shape(ts, attrs):
    c, _, _, n, oh, ow = _window_shape(ts, {**pool_window(attrs), "value": 0.0}).shape
    return TensorType(ts[0].dtype, (n, c, oh, ow))


def _per_patch(b, v):
    """[N,C,OH,OW] as [C,1,1,N,OH,OW]: one value per patch, which fold and fold_taps broadcast."""
    n, c, oh, ow = v.shape
    return b.reshape(b.transpose(v, perm=(1, 0, 2, 3)), shape=(c, 1, 1, n, oh, ow))


def _unpatch(b, v):
    """[C,N,OH,OW] pooled values back to NCHW."""
    return b.transpose(v, perm=(1, 0, 2, 3))


def _tiles(b, x, attrs):
    """x as [N,C,OH,KH,OW,KW] when the patches tile it exactly (stride = kernel, no padding, sizes
    divisible): pooling is then a reduction over axes 3 and 5 of this view, with no gather and no
    layout change either way (None when the patches overlap, skip pixels or need padding)."""
    (kh, kw), (sh, sw), (ph, pw), _ = geometry(pool_window(attrs))
    n, c, h, w = x.shape
    if (sh, sw) != (kh, kw) or (ph, pw) != (0, 0) or h % kh or w % kw:
        return None
    return b.reshape(x, shape=(n, c, h // kh, kh, w // kw, kw))


def _per_tile(b, v):
    """[N,C,OH,OW] as [N,C,OH,1,OW,1], to broadcast over the tiles view."""
    n, c, oh, ow = v.shape
    return b.reshape(v, shape=(n, c, oh, 1, ow, 1))


def _pool(b, x, attrs, reduce, fill: float):
    """`reduce` ("max" or "sum") over each patch of x, NCHW; padding reads `fill`."""
    t = _tiles(b, x, attrs)
    if t is not None:
        return b.op(reduce, t, axes=(3, 5))
    return _unpatch(b, b.op(reduce, b.window(x, **pool_window(attrs), value=fill), axes=(1, 2)))


def _max_pool_vjp(b, n, g):
    # as in PyTorch, a patch's g goes to the first of its maxima (patch order: row by row), which
    # the forward values tell: `first` = KH*KW - (tap number of the first max)
    x = n.inputs[0]
    kh, kw = _pair(n.attrs["kernel"], "kernel")
    t = _tiles(b, x, n.attrs)
    if t is not None:
        left = _taps_left(b, t, (3, 5), kw)
        first = b.max(b.mul(b.eq(t, _per_tile(b, n.out)), left), axes=(3, 5), keepdims=True)
        return [b.reshape(b.mul(b.eq(left, first), _per_tile(b, g)), shape=tuple(x.shape))]
    # overlapping patches: one reduction over (pixel, tap) gives each pixel the g of every patch
    # whose first max it is; it gathers `first` and g per tap, so no patch-sized array is written
    win = b.window(x, **pool_window(n.attrs), value=-math.inf)
    is_max = b.eq(win, b.broadcast_to(_per_patch(b, n.out), shape=tuple(win.shape)))
    first = b.max(b.mul(is_max, _taps_left(b, win, (1, 2), kw)), axes=(1, 2), keepdims=True)
    geo = {"size": tuple(x.shape[2:]), **pool_window(n.attrs)}
    taps = b.fold_taps(first, **geo)  # 0 where the tap is outside every patch
    mine = b.eq(taps, _taps_left(b, taps, (2, 3), kw))
    return [b.sum(b.mul(mine, b.fold_taps(_per_patch(b, g), **geo)), axes=(2, 3))]


def _taps_left(b, v, axes: tuple[int, int], kw: int):
    """KH*KW minus each element's tap number (row by row over `axes`): from KH*KW down to 1."""
    kh = v.shape[axes[0]]
    return b.sub(float(kh * kw), b.add(b.mul(b.iota(v, axis=axes[0]), float(kw)), b.iota(v, axis=axes[1])))


def _pool_ref(reduce, fill):
    def ref(x, kernel, stride, padding):
        geo = pool_window({"kernel": kernel, "stride": stride, "padding": padding})
        return reduce(_window_ref(x, value=fill, **geo), axis=(1, 2)).transpose(1, 0, 2, 3).astype(x.dtype)
    return ref


register(OpDef(
    "max_pool2d", 1, _pool_shape, _max_pool_vjp, _pool_ref(np.max, -np.inf),
    Decompose(lambda b, x, **attrs: _pool(b, x, attrs, "max", -math.inf)),
    _POOL, "x: T[N,C,H,W], kernel, stride=kernel, padding=0 -> T[N,C,OH,OW], the max of each patch "
    "(padding never wins; the gradient goes to a patch's first max, as in PyTorch)",
    frozenset({Trait.WINDOW_MAX})))


def _area(attrs) -> float:
    return 1.0 / math.prod(_pair(attrs["kernel"], "kernel"))


def _avg_pool_vjp(b, n, g):
    x, g = n.inputs[0], b.mul(g, _area(n.attrs))
    t = _tiles(b, x, n.attrs)
    if t is not None:
        return [b.reshape(b.broadcast_to(_per_tile(b, g), shape=tuple(t.shape)), shape=tuple(x.shape))]
    return [b.fold(_per_patch(b, g), size=tuple(x.shape[2:]), **pool_window(n.attrs))]


register(OpDef(
    "avg_pool2d", 1, _pool_shape, _avg_pool_vjp,
    _pool_ref(lambda p, axis: np.mean(p, axis=axis), 0.0),
    Decompose(lambda b, x, **attrs: b.mul(_pool(b, x, attrs, "sum", 0.0), _area(attrs))),
    _POOL, "x: T[N,C,H,W], kernel, stride=kernel, padding=0 -> T[N,C,OH,OW], the mean of each patch "
    "(padding counts as zeros)"))


def _gap_shape(ts, attrs):
    _image(ts[0])
    return TensorType(ts[0].dtype, tuple(ts[0].shape[:2]))


register(OpDef(
    "global_avg_pool", 1, _gap_shape,
    lambda b, n, g: [b.mul(b.broadcast_to(b.reshape(g, shape=(*g.shape, 1, 1)), shape=tuple(n.inputs[0].shape)),
                           1.0 / math.prod(n.inputs[0].dims[2:]))],
    lambda x: x.mean(axis=(2, 3)),
    Decompose(lambda b, x: b.mean(x, axes=(2, 3))), {},
    "x: T[N,C,H,W] -> T[N,C], the mean over each channel's pixels"))
