"""`graphc check`: backprop against float64 central differences, with the time of each.

The model is recompiled in float64 (codegen is dtype-generic), so both gradients come from the same
generated code paths: the gradient graph for backprop, the forward graph for the differences.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from graphc.autodiff.graphs import gradient_graph
from graphc.driver import batch_dim, compile_graph, forward
from graphc.errors import DataError, InternalError
from graphc.frontend import Program
from graphc.ir.graph import Graph
from graphc.ops.registry import index_bound
from graphc.ir.init import init_params

STEP = 1e-5        # central-difference step (float64)
FLOOR = 1e-6       # relative errors are taken against max(|backprop|, |numerical|, FLOOR)
TOLERANCE = 1e-4
KINK = TOLERANCE   # one-sided slopes differing by more than this (relative) mark a kink


def _feeds(prog: Program, g: Graph, batch: int, seed: int) -> dict[str, np.ndarray | float]:
    """Real samples when the model names its data, else seeded random values; defaults win."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray | float] = {}  # a default is a number (an np.float64)
    if prog.train.data and batch_dim(prog.graph):
        from graphc.runtime.train.data import load_dataset
        from graphc.runtime.train.feeds import bind_split, rows, samples
        data = load_dataset(prog.train.data)
        sources = bind_split(prog, g, data, "train", prog.train.data_map)
        if batch > samples(sources):
            raise DataError(f"{data.name}: {samples(sources)} training samples, fewer than the "
                            f"batch of {batch} to check")
        types = {i.value.name: i.value.dtype for i in g.inputs}
        feeds.update({k: rows(src, types[k], 0, batch) for k, src in sources.items()})
    for i in g.inputs:
        v = i.value
        if v.name in feeds:
            continue
        if i.default is not None:
            feeds[v.name] = np.float64(i.default)
        elif v.dtype == "i32":
            bound = index_bound(g, v)
            if isinstance(bound, str):  # g is bound, and with it the class counts ops declare
                raise InternalError(f"{v.name}'s index bound {bound} is not bound")
            feeds[v.name] = rng.integers(0, bound or 2, v.dims).astype(np.int32)
        else:
            feeds[v.name] = rng.normal(size=v.dims)
    return feeds


def gradcheck(prog: Program, batch: int | None = None, seed: int = 0) -> dict:
    """The report of `graphc check` on a model: its params initialized from `seed`, its inputs fed
    with `batch` samples of its data (or seeded random values)."""
    batch = batch or min(8, prog.train.batch)
    fwd = forward(prog, batch, "f64")
    params = init_params(fwd.params, seed)
    return {"model": prog.graph.name, "batch": batch, **check_graph(fwd, params, _feeds(prog, fwd, batch, seed))}


def check_graph(fwd: Graph, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray | float]) -> dict:
    """Backprop against central differences for a bound float64 forward graph, at `params` (changed
    in place while differencing, restored after) and `feeds`: every param and float input."""
    fwd.updates = []  # like the gradient graph: every run sees the same state (dropout masks)
    back = compile_graph(gradient_graph(fwd), params).step
    front = compile_graph(fwd, params).step
    loss = fwd.loss_name()

    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = back(**feeds)
        runs.append(time.perf_counter() - t0)
    backprop = {k[2:]: np.array(v) for k, v in out.items() if k.startswith("d.")}

    # perturb params in place and inputs through the feeds
    arrays = {**params, **{k: np.array(feeds[k], dtype=np.float64) for k in backprop if k not in params}}
    f0 = float(front(**feeds)[loss])
    t0 = time.perf_counter()
    numerical, kinks, calls = {}, {}, [0]
    for name, arr in arrays.items():
        flat = arr.reshape(-1)
        grad = np.empty(flat.size)
        smooth = np.ones(flat.size, bool)
        is_input = name not in params
        def f(x: float) -> float:  # the loss with element j of this tensor set to x
            calls[0] += 1
            flat[j] = x
            return float(front(**({name: arr} if is_input else {}))[loss])

        for j in range(flat.size):
            old = flat[j]
            grad[j], smooth[j] = _derivative(f, old, f0, STEP)
            flat[j] = old
        if is_input:
            front(**{name: arr})
        numerical[name] = grad.reshape(arr.shape)
        kinks[name] = ~smooth.reshape(arr.shape)
    numeric_s = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    for name, n in numerical.items():
        a = backprop[name]
        err = np.where(kinks[name], 0.0, np.abs(a - n))
        rel = err / np.maximum(np.maximum(np.abs(a), np.abs(n)), FLOOR)
        rows.append({"name": name, "shape": list(np.shape(a)), "max_abs_error": float(err.max(initial=0)),
                     "max_rel_error": float(rel.max(initial=0)), "kinks": int(kinks[name].sum())})
    back_s = float(np.median(runs))
    worst = max((r["max_rel_error"] for r in rows), default=0.0)
    return {"dtype": "f64", "step": STEP, "loss": f0, "params": rows, "max_rel_error": worst, "ok": worst <= TOLERANCE, "backprop_seconds": back_s,
            "numerical_seconds": numeric_s, "speedup": numeric_s / back_s if back_s else float("inf"),
            "evaluations": calls[0], "elements": sum(int(np.prod(r["shape"])) for r in rows)}


def _derivative(f, x0: float, f0: float, h: float) -> tuple[float, bool]:
    """The central difference of f at x0, and False where f has no derivative there.

    A step is trusted where f is smooth across it: its one-sided slopes agree (within a quarter of
    the tolerance, on the scale the comparison uses, plus their rounding noise), or they differ by
    curvature alone: the gap shrinks with the step (to a quarter at a quarter step) and the central
    difference agrees with the larger step's. Where two steps agree, the larger one's difference is
    used: it has a quarter of the rounding noise. A kink within h (a relu, or one downstream, crossing
    0; a tie in a max) fails both at h; at h / 4 it is either outside (that step is used) or at x0
    (a gap that does not shrink: no derivative to compare, any subgradient is right)."""
    close = lambda a, b, noise: abs(a - b) <= KINK / 4 * max(abs(a), abs(b), FLOOR) + noise
    before: tuple[float, float] | None = None  # the larger step's central difference and gap
    for step in (h, h / 4):
        up, down = f(x0 + step), f(x0 - step)
        ahead, behind = (up - f0) / step, (f0 - down) / step
        central, gap = (up - down) / (2 * step), abs(ahead - behind)
        noise = 4 * np.finfo(np.float64).eps * max(abs(up), abs(down), abs(f0)) / step
        smooth = close(ahead, behind, noise)
        if before is not None and close(central, before[0], noise) and (smooth or gap <= before[1] / 2):
            return before[0], True  # the larger step's difference: it has less rounding noise
        if smooth:
            return central, True
        before = central, gap
    return central, False


def format_report(r: dict) -> str:
    lines = [f"gradient check of {r['model']} (float64, batch {r['batch']}, central differences h={r['step']})",
             f"{'tensor':<24} {'shape':<14} {'max abs err':>12} {'max rel err':>12} {'kinks':>6}"]
    for row in r["params"]:
        lines.append(f"{row['name']:<24} {str(row['shape']):<14} {row['max_abs_error']:>12.3e} "
                     f"{row['max_rel_error']:>12.3e} {row['kinks']:>6}")
    kinks = sum(row["kinks"] for row in r["params"])
    lines += [f"max relative error {r['max_rel_error']:.3e} ({'ok' if r['ok'] else 'FAILED'}: tolerance {TOLERANCE:g})"]
    if kinks:
        lines.append(f"{kinks} of {r['elements']} elements sit at a kink (a relu at 0, a tie in a max): "
                     f"no derivative there, so they are left out")
    lines += [f"backprop:  {r['backprop_seconds'] * 1e6:10.1f} us (one gradient graph run)",
              f"numerical: {r['numerical_seconds'] * 1e6:10.1f} us ({r['evaluations']} forward runs)",
              f"backprop is {r['speedup']:.0f}x faster than the numerical gradient"]
    return "\n".join(lines)
