"""The `graphc` command line: ir, grad, check, profile, compile, train, eval (each also a Python API)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from graphc.errors import GraphcError


def _ir(a) -> None:
    from graphc import driver
    from graphc.codegen.jit import optimize
    from graphc.codegen.module import build_module
    from graphc.codegen.target import host_target
    from graphc.ir.printer import print_graph
    from graphc.ir.serialize import dumps
    from graphc.passes.pipeline import print_schedule, schedule

    prog = driver.load(a.model)
    stage = "grad" if a.grad and a.stage == "forward" else a.stage
    g = prog.graph if stage == "forward" and a.batch is None else (
        driver.forward(prog, a.batch) if stage == "forward" else driver.train_graph(prog, a.batch))
    if stage in ("forward", "grad"):
        print(dumps(g) if a.json else print_graph(g))
        return
    sched = schedule(g)
    if stage == "fused":
        print(print_schedule(sched))
    else:  # the optimized module: what the native code is generated from
        print(optimize(build_module(sched, host_target(), driver.ENTRY), host_target()))


def _values(prog, sets: list[str]) -> dict[str, np.ndarray]:
    """Input values: defaults from the model, overridden by --set NAME=NUMBER|FILE.npy."""
    from graphc.errors import DataError
    vals = {i.value.name: np.float64(i.default) for i in prog.graph.inputs if i.default is not None}
    names = {i.value.name for i in prog.graph.inputs}
    for s in sets:
        name, eq, text = s.partition("=")
        if not eq or name not in names:
            raise GraphcError(f"--set {s}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        try:
            vals[name] = np.load(text, allow_pickle=False) if text.endswith(".npy") else np.float64(text)
        except (OSError, ValueError) as e:
            raise DataError(f"--set {s}: {e}") from None
    missing = [n for n in names if n not in vals]
    if missing:
        raise GraphcError(f"input {missing[0]} has no value: give it one with --set {missing[0]}=VALUE "
                          f"(a number or a .npy file)")
    return vals


def _grad(a) -> None:
    from graphc import driver
    from graphc.autodiff.step import gradient_graph
    from graphc.runtime.init import init_params

    prog = driver.load(a.model)
    vals = _values(prog, a.set)
    batch = next((len(np.atleast_1d(vals[i.value.name])) for i in prog.graph.inputs
                  if i.value.shape and i.value.name in vals), None)
    g = gradient_graph(driver.forward(prog, batch))
    params = init_params(g.params, a.seed)
    out = driver.compile_graph(g, params).step(**vals)
    result = {k: np.array(v).tolist() for k, v in out.items()}
    if a.json:
        print(json.dumps(result, indent=1))
        return
    for k, v in out.items():
        text = np.array2string(np.asarray(v), precision=6, threshold=20) if np.ndim(v) else f"{float(v):.6g}"
        print(f"{k:<{max(map(len, out))}} = {text}")


def _check(a) -> None:
    from graphc.runtime.gradcheck import gradcheck, format_report
    from graphc import driver
    report = gradcheck(driver.load(a.model), batch=a.batch, seed=a.seed)
    print(json.dumps(report, indent=1) if a.json else format_report(report))
    if not report["ok"]:
        sys.exit(1)


def _compile(a) -> None:
    from graphc.runtime.artifacts import write_artifacts
    from graphc import driver
    prog = driver.load(a.model)
    out = Path(a.output or Path(a.model).stem + ".graphc")
    for line in write_artifacts(prog, out, a.batch):
        print(line)


def _profile(a) -> None:
    from graphc import driver
    from graphc.runtime.profile import format_profile, profile_step
    prog = driver.load(a.model)
    wall, kernels = profile_step(prog, a.batch, a.steps, a.threads)
    print(format_profile(prog.graph.name, wall, kernels, a.top))


def _opts(a, prog):
    from graphc.runtime.trainer import TrainOptions
    t = prog.train
    args = dict(t.opt_args)
    lr = args.pop("lr", None)  # lr is a runtime input of the step, not an optimizer constant
    if a.lr is not None:
        lr = a.lr
    if lr is None:
        raise GraphcError("no learning rate: set lr in the train block's optimizer or pass --lr")
    return TrainOptions(epochs=a.epochs or t.epochs, batch=a.batch or t.batch, lr=lr,
                        seed=t.seed if a.seed is None else a.seed, optimizer=t.optimizer, opt_args=args,
                        log=Path(a.log) if a.log else None, out=Path(a.out) if a.out else None,
                        progress=not a.no_progress, threads=a.threads)


def _data(a, prog):
    from graphc.runtime.data import load_dataset
    spec = a.data or prog.train.data
    if spec is None:
        raise GraphcError("no data: set data in the train block or pass --data PATH")
    return load_dataset(spec)


def _train(a) -> None:
    from graphc import driver
    from graphc.runtime.trainer import train
    prog = driver.load(a.model)
    opts = _opts(a, prog)
    t0 = time.perf_counter()
    data = _data(a, prog)
    print(f"data {data.name}: {len(data.x_train)} train, {len(data.x_test)} test samples "
          f"({time.perf_counter() - t0:.2f} s)")
    history = train(prog, data, opts)
    if opts.out:
        print(f"params saved to {opts.out / 'params.npz'}")
    if history:
        last = history[-1]
        acc = next((v for k, v in last.items() if k.startswith("test_acc")), None)
        print(f"final: test_loss {last['test_loss']:.4f}" + (f"  test_accuracy {acc:.4f}" if acc is not None else ""))


def _eval(a) -> None:
    from graphc import driver
    from graphc.runtime.checkpoint import load_arrays
    from graphc.runtime.trainer import Evaluator, data_inputs, fit_features
    prog = driver.load(a.model)
    arrays, _ = load_arrays(a.params)
    g = driver.forward(prog, 1)
    params = {}
    for p in g.params:
        arr = arrays.get(p.value.name)
        if arr is None or arr.shape != tuple(p.value.shape):
            raise GraphcError(f"{a.params}: param {p.value.name} {'missing' if arr is None else f'has shape {list(arr.shape)}'}"
                              f", model wants {p.value.type}")
        params[p.value.name] = np.ascontiguousarray(arr, dtype=np.float32 if p.value.dtype == "f32" else np.float64)
    data = _data(a, prog)
    xin, _ = data_inputs(prog.graph)
    res = Evaluator(prog, params)(fit_features(data.x_test, xin, data.name), data.y_test)
    print("  ".join(f"test_{k} {v:.4f}" for k, v in res.items()))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphc", description="Compile and train neural networks written in .net files.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ir", help="print the IR at a stage")
    s.add_argument("model")
    s.add_argument("--grad", action="store_true", help="the whole training step (forward, backward, update)")
    s.add_argument("--stage", choices=["forward", "grad", "fused", "llvm"], default="forward")
    s.add_argument("--json", action="store_true", help="the versioned JSON form")
    s.add_argument("--batch", type=int, help="bind the batch dim (default: the train block's)")
    s.set_defaults(fn=_ir)

    s = sub.add_parser("grad", help="evaluate once; print outputs and gradients of every input and param")
    s.add_argument("model")
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a number or a .npy file")
    s.add_argument("--seed", type=int, default=0, help="seed for param initialization")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_grad)

    s = sub.add_parser("check", help="backprop vs float64 numerical gradients")
    s.add_argument("model")
    s.add_argument("--batch", type=int, default=None, help="samples in the checked batch (default 8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_check)

    s = sub.add_parser("profile", help="time each fused kernel of the training step")
    s.add_argument("model")
    s.add_argument("--batch", type=int, help="batch size (default: the train block's)")
    s.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    s.add_argument("--threads", type=int, help="threads for large kernels (default: all cores)")
    s.add_argument("--top", type=int, default=25, help="kernels shown, slowest first (default 25)")
    s.set_defaults(fn=_profile)

    s = sub.add_parser("compile", help="write the compiled artifacts")
    s.add_argument("model")
    s.add_argument("-o", "--output", help="output directory (default MODEL.graphc)")
    s.add_argument("--batch", type=int)
    s.set_defaults(fn=_compile)

    for name, fn, helptext in (("train", _train, "train a model"), ("eval", _eval, "evaluate saved params")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("model")
        s.add_argument("--data", help="bundled name, MNIST IDX directory, CSV(.gz) with label last, or NPZ")
        if name == "train":
            s.add_argument("--epochs", type=int)
            s.add_argument("--batch", type=int)
            s.add_argument("--lr", type=float)
            s.add_argument("--seed", type=int)
            s.add_argument("--log", help="append one JSON object per epoch to this file")
            s.add_argument("--out", help="directory for params.npz")
            s.add_argument("--no-progress", action="store_true", help="no progress bar")
            s.add_argument("--threads", type=int, help="threads for large kernels (default: all cores)")
        else:
            s.add_argument("--params", required=True, help="a params.npz written by graphc train --out")
        s.set_defaults(fn=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        a.fn(a)
    except GraphcError as e:
        if a.debug:
            traceback.print_exc()
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
