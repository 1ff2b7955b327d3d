"""The `graphc` command line: ir, grad, check, profile, compile, export, viz, train, eval, predict,
sample (each also a Python API), and cache."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from graphc.errors import GraphcError, InternalError, check_regular


def _ir(a) -> None:
    from graphc import driver
    from graphc.codegen.backend import Build, CpuBackend
    from graphc.codegen.jit import optimize
    from graphc.ir.printer import print_graph
    from graphc.ir.serialize import dumps
    from graphc.passes.pipeline import print_schedule, schedule

    prog = driver.load(a.model)
    stage = "grad" if a.grad and a.stage == "forward" else a.stage
    if a.eval and stage == "grad":
        raise GraphcError("--eval shows the evaluation form of the forward graph; the training step "
                          "(--grad) is built from the training form")
    if stage == "forward" and a.batch is None:
        g = prog.eval_graph if a.eval else prog.graph
    elif stage == "forward" or a.eval:  # --eval --stage fused: what evaluation compiles
        g = driver.forward(prog, a.batch, training=not a.eval)
    else:
        g = driver.train_graph(prog, a.batch, ranks=a.ranks)
    if stage in ("forward", "grad"):
        print(dumps(g) if a.json else print_graph(g))
        return
    sched = schedule(g)
    if stage == "fused":
        print(print_schedule(sched))
    else:  # the optimized module: what the native code is generated from
        backend = CpuBackend()
        print(optimize(backend.module(sched, driver.ENTRY, Build()), backend.target))


def _values(prog, sets: list[str]) -> dict[str, np.ndarray | np.float64]:
    """Values of inputs (defaults from the model) and params, from --set NAME=NUMBER|FILE.npy."""
    from graphc.errors import DataError
    vals: dict[str, np.ndarray | np.float64] = {i.value.name: np.float64(i.default)
                                                for i in prog.graph.inputs if i.default is not None}
    inputs = [i.value.name for i in prog.graph.inputs]
    names = inputs + [p.value.name for p in prog.graph.params]
    for s in sets:
        name, eq, text = s.partition("=")
        if not eq or name not in names:
            raise GraphcError(f"--set {s}: expected NAME=VALUE with NAME an input or param: {', '.join(names)}")
        try:
            if text.endswith(".npy"):
                check_regular(text)  # a FIFO would block the read
                vals[name] = np.load(text, allow_pickle=False)
            else:
                vals[name] = np.float64(text)
        except (OSError, ValueError) as e:
            raise DataError(f"--set {s}: {e}") from None
    missing = [n for n in inputs if n not in vals]
    if missing:
        raise GraphcError(f"input {missing[0]} has no value: give it one with --set {missing[0]}=VALUE "
                          f"(a number or a .npy file)")
    return vals


def _grad(a) -> None:
    from graphc import driver
    from graphc.autodiff.graphs import gradient_graph
    from graphc.ir.init import init_params
    from graphc.runtime.train.feeds import checked

    prog = driver.load(a.model)
    vals = _values(prog, a.set)
    batch = next((len(np.atleast_1d(vals[i.value.name])) for i in prog.graph.inputs
                  if i.value.shape and i.value.name in vals), None)
    g = gradient_graph(driver.forward(prog, batch))
    params = init_params(g.params, a.seed)
    for kind, leaves in (("input", g.inputs), ("param", g.params)):  # as graphc.Model checks inputs
        for leaf in leaves:
            name = leaf.value.name
            if name in vals:
                vals[name] = checked(prog.graph, leaf, vals[name], f"{kind} {name} (--set)")
    for p in g.params:
        if p.value.name in vals:
            params[p.value.name][...] = vals.pop(p.value.name)
    out = driver.compile_graph(g, params).step(**vals)
    result = {k: np.array(v).tolist() for k, v in out.items()}
    if a.json:
        print(json.dumps(result, indent=1))
        return
    for k, a in out.items():
        text = np.array2string(np.asarray(a), precision=6, threshold=20) if np.ndim(a) else f"{float(a):.6g}"
        print(f"{k:<{max(map(len, out))}} = {text}")


def _check(a) -> None:
    from graphc.runtime.train.gradcheck import gradcheck, format_report
    from graphc import driver
    report = gradcheck(driver.load(a.model), batch=a.batch, seed=a.seed)
    print(json.dumps(report, indent=1) if a.json else format_report(report))
    if not report["ok"]:
        sys.exit(1)


def _compile(a) -> None:
    from graphc.artifacts import write_artifacts
    from graphc import driver
    prog = driver.load(a.model)
    out = Path(a.output or Path(a.model).stem + ".graphc")
    try:  # now, not after compiling; with its parents, as the user named it
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GraphcError(f"-o {out}: cannot make a directory there ({e.strerror})") from None
    try:
        lines = write_artifacts(prog, out, a.batch, a.threads, a.ranks)
    except OSError as e:
        raise GraphcError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    for line in lines:
        print(line)


def _profile(a) -> None:
    from graphc import driver
    from graphc.runtime.train.profile import format_profile, profile_step
    prog = driver.load(a.model)
    wall, kernels = profile_step(prog, a.batch, a.steps, a.threads)
    print(format_profile(prog.graph.name, wall, kernels, a.top))


def _opts(a, prog):
    from graphc.api import learning_rate
    from graphc.runtime.train.trainer import TrainOptions
    t = prog.train
    args = dict(t.opt_args)
    args.pop("lr", None)  # lr is a runtime input of the step, not an optimizer constant
    lr = learning_rate(prog, a.lr)
    out = a.out or a.resume
    if a.checkpoint_every and not out:
        raise GraphcError("--checkpoint-every needs a directory to write to: --out DIR or --resume DIR")
    return TrainOptions(epochs=a.epochs or t.epochs, batch=a.batch or t.batch, lr=lr,
                        seed=t.seed if a.seed is None else a.seed, optimizer=t.optimizer, opt_args=args,
                        log=Path(a.log) if a.log else None, out=Path(out) if out else None,
                        progress=not a.no_progress, threads=a.threads,
                        resume=Path(a.resume) if a.resume else None,
                        checkpoint_every=a.checkpoint_every, on_nonfinite=a.on_nonfinite,
                        check_bounds=a.check_bounds, force=a.force, data_map=_mapping(a, prog),
                        patience=a.patience or t.patience,
                        steps_per_epoch=a.steps_per_epoch or t.steps_per_epoch, ranks=a.mpi)


def _mapping(a, prog) -> dict[str, str]:
    """Input -> array: the train block's mapping, with --map's entries over it."""
    mapping = dict(prog.train.data_map)
    for entry in a.map:
        name, eq, array = entry.partition("=")
        if not (eq and name and array):
            raise GraphcError(f"--map {entry}: expected INPUT=ARRAY, e.g. --map x=images")
        mapping[name] = array
    return mapping


def _held_out(a, prog, split: str) -> float | str | None:
    """--validation or --test (`split`): a fraction or a file, else the train block's."""
    text = getattr(a, split, None)
    if text is None:
        return getattr(prog.train, split)
    try:
        v = float(text)
    except ValueError:
        return text
    if not 0 < v < 1:
        raise GraphcError(f"--{split} {text}: give a fraction between 0 and 1, or a file")
    return v


def _data(a, prog):
    from graphc.errors import DataError
    from graphc.runtime.train.data import load_dataset
    spec = a.data or prog.train.data
    if spec is None:
        raise GraphcError("no data: set data in the train block or pass --data PATH",
                          prog.train.locs.get("train"))
    try:
        return load_dataset(spec, _held_out(a, prog, "validation"), _held_out(a, prog, "test"))
    except DataError as e:
        if a.data:
            raise
        raise DataError(e.message, prog.train.locs["data"], hint=e.hint) from None  # point at `data =`


def _summary(a) -> None:
    from graphc import driver
    from graphc.runtime.train.summary import format_summary, summarize
    print(format_summary(summarize(driver.load(a.model), a.batch)))


def _train(a) -> None:
    from graphc import driver
    from graphc.runtime.train.trainer import train
    prog = driver.load(a.model)
    opts = _opts(a, prog)
    plots = [Path(a.plot)] + ([opts.out / Path(a.plot).name] if opts.out else []) if a.plot else []
    for flag, path in (("--log", opts.log), ("--plot", Path(a.plot) if a.plot else None)):
        if path:
            _check_output(flag, path, opts.out)
    if plots:
        from graphc.runtime.train.plot import check_plot_path, write_curves
        check_plot_path(plots[0])  # before training, not after it
    t0 = time.perf_counter()
    data = _data(a, prog)
    # a text's streams each hold all of the split's bytes but one
    counts = ", ".join(f"{len(next(iter(v.values()))) + data.text} {k}" for k, v in data.splits().items())
    print(f"data {data.name}: {counts} {'bytes of text' if data.text else 'samples'} "
          f"({time.perf_counter() - t0:.2f} s)")
    if a.init_from:
        _init_from(a.init_from, prog, opts)
    history = train(prog, data, opts)
    if opts.out:
        print(f"params saved to {opts.out / 'params.npz'}")
    if plots and history and not (a.mpi and a.mpi.rank):  # rank 0 draws them
        write_curves(history, plots, f"{prog.graph.name}: {opts.optimizer} lr {opts.lr:g}, batch {opts.batch}")
        for path in plots:
            print(f"curves plotted to {path}")
    if history:  # the test split's figures; text has none, and its last validation stands
        last = history[-1]
        split = "test" if "test_loss" in last else "val"
        shown = [f"{split}_loss"] + [k for k in last if k.startswith((f"{split}_acc", f"{split}_bpb"))]
        chosen = f" (best params, epoch {last['best_epoch']})" if "best_epoch" in last else ""
        print(f"final{chosen}: " + "  ".join(f"{k} {last[k]:.4f}" for k in shown))


def _init_from(path: str, prog, opts) -> None:
    """Start from the weights saved in `path` (fine-tuning): those it holds are checked against the
    model's and trained; the rest keep their initializer, and the output says which."""
    from graphc.runtime.train.checkpoint import load_params
    if opts.resume:
        raise GraphcError("--init-from starts a new run from saved weights; --resume continues a run "
                          "with its own: give one of them")
    leaves = prog.graph.params + prog.graph.state
    opts.params = load_params(path, leaves, partial=True)
    kept = [p.value.name for p in leaves if p.value.name not in opts.params]
    print(f"initialized {len(opts.params)} of {len(leaves)} params from {path}"
          + (f"; not in it, so drawn by their initializers: {', '.join(kept)}" if kept else ""))


def _eval(a) -> None:
    from graphc import driver
    from graphc.runtime.train.checkpoint import load_params
    from graphc.runtime.train.feeds import bind_split, scales
    from graphc.runtime.train.trainer import Evaluator
    prog = driver.load(a.model)
    g = prog.eval_graph  # reads the params and the model's state (batch norm's running statistics)
    params = load_params(a.params, g.params + g.state, scale=scales(prog))
    data = _data(a, prog)
    evaluate = Evaluator(prog, params, note=lambda line: print(line, file=sys.stderr),
                         batch=prog.train.batch if data.text else None, text=data.text)
    split, prefix = ("validation", "val") if data.text else ("test", "test")  # text has no test split
    fed = bind_split(prog, driver.forward(prog, training=False), data, split, _mapping(a, prog))
    print("  ".join(f"{prefix}_{k} {v:.4f}" for k, v in evaluate(fed, split).items()))


def _predict(a) -> None:
    from graphc import driver
    from graphc.runtime.train.checkpoint import load_params
    from graphc.runtime.train.data import load_arrays
    from graphc.runtime.train.feeds import scales
    from graphc.runtime.train.predict import predict, write_predictions
    prog = driver.load(a.model)
    out = Path(a.output)
    _check_output("-o", out, None)
    g = prog.eval_graph
    params = load_params(a.params, g.params + g.state, scale=scales(prog))
    origin, arrays = load_arrays(a.data)
    outputs = predict(prog, params, arrays, _mapping(a, prog), origin, progress=True if a.progress else None)
    print(write_predictions(out, outputs))


def _sample(a) -> None:
    import codecs
    from graphc import driver
    from graphc.runtime.train.checkpoint import load_params
    from graphc.runtime.train.feeds import scales
    from graphc.runtime.train.sample import generate, language_model
    prog = driver.load(a.model)
    lm = language_model(prog)  # another kind of model is refused before its params are read
    params = load_params(a.params, lm.graph.params + lm.graph.state, scale=scales(prog))
    prompt = os.fsencode(a.prompt)  # the bytes as given, even those that are not UTF-8
    text = generate(lm, params, prompt, a.tokens, a.temperature, a.seed)
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character's bytes may come apart
    sys.stdout.write(decode.decode(prompt))
    for byte in text:
        sys.stdout.write(decode.decode(byte))
        sys.stdout.flush()
    print(decode.decode(b"", final=True))


def _export(a) -> None:
    from graphc import driver
    from graphc.export.onnx import write_onnx
    from graphc.runtime.train.checkpoint import load_params
    prog = driver.load(a.model)
    g = prog.eval_graph  # inference: no dropout, batch norm on its running statistics
    print(f"wrote {a.output}: {write_onnx(g, load_params(a.params, g.params + g.state), Path(a.output))}")


def _viz(a) -> None:
    from graphc import driver
    from graphc.export.dot import write_picture
    prog = driver.load(a.model)
    if a.eval and a.grad:
        raise GraphcError("--eval draws the evaluation forward graph; it has no training step (drop --grad)")
    g = driver.train_graph(prog, a.batch) if a.grad else prog.eval_graph if a.eval else prog.graph
    write_picture(g, Path(a.output))
    print(f"wrote {a.output}: {g.name}, {len(g.nodes)} nodes")


def _cache(a) -> None:
    from graphc.codegen import cache

    if a.clear:
        directory, count, size = cache.clear()
        print(f"removed {count} entries ({size} bytes) from {directory}")
    else:
        directory, count, size = cache.usage()
        print(f"{directory}: {count} entries, {size} bytes (limit {cache.max_bytes()}, GRAPHC_CACHE_MAX_BYTES)")


def _check_output(flag: str, path: Path, out: Path | None) -> None:
    """Refuse now a file that training could not write at its end: a directory, or one in a
    directory that does not exist (other than `out`, which training makes). Nothing is created."""
    if path.is_dir():
        raise GraphcError(f"{flag} {path}: is a directory; name a file")
    parent = path.parent
    if not parent.is_dir() and not (out and parent.resolve() == out.resolve()):
        why = "is not a directory" if parent.exists() else "does not exist"
        raise GraphcError(f"{flag} {path}: {parent} {why}")


def _source(e: GraphcError) -> str | None:
    """The text of the file an error points into, for its source line and caret."""
    if e.loc is None or e.source is not None:
        return e.source
    try:
        return Path(e.loc.file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


def _whole(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= least."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {v}")
        return v
    return parse


def _finite(zero: str | None = None) -> Callable[[str], float]:
    """An argparse type: a positive, finite number (a learning rate), or 0 too where `zero` says
    what 0 means (a temperature's "greedy")."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(v) and (v > 0 or zero and v == 0)):
            raise argparse.ArgumentTypeError(f"must be {f'0 ({zero}) or ' if zero else ''}a positive "
                                             f"number, got {text}")
        return v
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphc", description="Compile and train neural networks written in .net files.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ir", help="print the IR at a stage")
    s.add_argument("model")
    s.add_argument("--grad", action="store_true", help="the whole training step (forward, backward, update)")
    s.add_argument("--stage", choices=["forward", "grad", "fused", "llvm"], default="forward")
    s.add_argument("--json", action="store_true", help="the versioned JSON form")
    s.add_argument("--batch", type=_whole(1), help="bind the batch dim (default: the train block's)")
    s.add_argument("--eval", action="store_true",
                   help="the evaluation form (no dropout, batch norm on running statistics)")
    s.add_argument("--ranks", type=_whole(1), default=1,
                   help="the training step of one of N data-parallel ranks (its gradients packed and summed)")
    s.set_defaults(fn=_ir)

    s = sub.add_parser("grad", help="evaluate once; print outputs and gradients of every input and param")
    s.add_argument("model")
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an input's or param's value (params by full name, e.g. fc1.W): a number or a .npy file")
    s.add_argument("--seed", type=_whole(0), default=0, help="seed for param initialization")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_grad)

    s = sub.add_parser("check", help="backprop vs float64 numerical gradients")
    s.add_argument("model")
    s.add_argument("--batch", type=_whole(1), default=None, help="samples in the checked batch (default 8)")
    s.add_argument("--seed", type=_whole(0), default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_check)

    s = sub.add_parser("profile", help="time each fused kernel of the training step")
    s.add_argument("model")
    s.add_argument("--batch", type=_whole(1), help="batch size (default: the train block's)")
    s.add_argument("--steps", type=_whole(1), default=20, help="timed steps (default 20)")
    s.add_argument("--threads", type=_whole(1), help="threads for large kernels (default: all cores)")
    s.add_argument("--top", type=_whole(1), default=25, help="kernels shown, slowest first (default 25)")
    s.set_defaults(fn=_profile)

    s = sub.add_parser("compile", help="write the compiled artifacts and the model's C library")
    s.add_argument("model")
    s.add_argument("-o", "--output", help="output directory (default MODEL.graphc)")
    s.add_argument("--batch", type=_whole(1),
                   help="samples per step, fixed in the library (default: the train block's)")
    s.add_argument("--threads", type=_whole(1),
                   help="threads a library context computes with (default: all cores)")
    s.add_argument("--ranks", type=_whole(1), default=1,
                   help="data-parallel over N processes: the training step takes batch/N rows and sums "
                        "its gradients through the extern slot `allreduce` (examples/c)")
    s.set_defaults(fn=_compile)

    s = sub.add_parser("export", help="write the inference graph as ONNX (needs graphc[onnx])")
    s.add_argument("model")
    s.add_argument("--params", required=True, help="a params.npz written by graphc train --out")
    s.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    s.set_defaults(fn=_export)

    s = sub.add_parser("viz", help="draw the forward graph, or with --grad the training step (Graphviz)")
    s.add_argument("model")
    s.add_argument("--grad", action="store_true", help="the whole training step: forward, backward, update")
    s.add_argument("--eval", action="store_true",
                   help="the evaluation form (no dropout, batch norm with its running statistics)")
    s.add_argument("-o", "--output", required=True, help="a .svg, .png or .pdf (rendered by `dot`), or .dot")
    s.add_argument("--batch", type=_whole(1),
                   help="bind the batch dim of the training step (default: the train block's)")
    s.set_defaults(fn=_viz)

    s = sub.add_parser("summary", help="layers, output shapes, params, FLOPs and the step's memory")
    s.add_argument("model")
    s.add_argument("--batch", type=_whole(1), help="the training step's batch (default: the train block's)")
    s.set_defaults(fn=_summary)

    s = sub.add_parser("cache", help="show the object cache's directory and size, or clear it")
    s.add_argument("--clear", action="store_true", help="remove graphc's entries")
    s.set_defaults(fn=_cache)

    for name, fn, helptext in (("train", _train, "train a model (under `mpirun -np N`: data-parallel on N processes)"),
                               ("eval", _eval, "evaluate saved params")):
        s = sub.add_parser(name, help=helptext, description=helptext + (
            "; see docs/distributed.md" if name == "train" else ""))
        s.add_argument("model")
        s.add_argument("--data", help="bundled name, MNIST IDX directory, directory of .npy files, "
                                      "CSV(.gz) (a header names its arrays; without one, the label "
                                      "last), or NPZ: arrays named like the inputs; "
                                      "or UTF-8 text (.txt, .txt.gz) for a language model")
        s.add_argument("--map", action="append", default=[], metavar="INPUT=ARRAY",
                       help="feed INPUT from the array ARRAY (where names differ; repeatable)")
        s.add_argument("--test", metavar="FRACTION|FILE",
                       help="hold out this fraction of the samples, or read this file, as the test split "
                            "(default: a fixed 20%% of arrays that name no split)")
        if name == "train":
            s.add_argument("--validation", metavar="FRACTION|FILE",
                           help="hold out this fraction of the training samples, or read this file, "
                                "for per-epoch metrics (the test split is reported at the end)")
            s.add_argument("--patience", type=_whole(1), metavar="N",
                           help="stop after N epochs without a better validation loss")
            s.add_argument("--epochs", type=_whole(1))
            s.add_argument("--steps-per-epoch", type=_whole(1), metavar="N",
                           help="an epoch is N steps of batches drawn at random (text's default: 500)")
            s.add_argument("--batch", type=_whole(1))
            s.add_argument("--lr", type=_finite())
            s.add_argument("--seed", type=_whole(0))
            s.add_argument("--log", help="append one JSON object per epoch to this file")
            s.add_argument("--out", help="directory for params.npz and the run's checkpoint (each epoch)")
            s.add_argument("--checkpoint-every", type=_whole(1), metavar="N",
                           help="also checkpoint every N steps (needs --out or --resume)")
            s.add_argument("--resume", metavar="DIR",
                           help="continue the run checkpointed in DIR (and keep checkpointing there)")
            s.add_argument("--init-from", metavar="PARAMS",
                           help="start from the weights in a params.npz or checkpoint.npz (fine-tuning); "
                                "params it lacks keep their initializer")
            s.add_argument("--force", action="store_true",
                           help="replace a run already in --out (otherwise refused: --resume continues it)")
            s.add_argument("--on-nonfinite", choices=["stop", "skip"], default="stop",
                           help="a NaN/Inf loss stops training (default) or its batch is skipped")
            s.add_argument("--plot", help="draw loss and accuracy per epoch into this picture (.png, .svg, ...;"
                                          " a copy goes to --out), needs graphc[plot]")
            s.add_argument("--no-progress", action="store_true", help="no progress bar")
            s.add_argument("--threads", type=_whole(1), help="threads for large kernels (default: all cores)")
            s.add_argument("--check-bounds", action="store_true",
                           help="check every index the generated loops compute (slower; for debugging graphc)")
        else:
            s.add_argument("--params", required=True,
                           help="a params.npz or checkpoint.npz written by graphc train --out")
        s.set_defaults(fn=fn)

    s = sub.add_parser("predict", help="the model's outputs for every sample of a data file")
    s.add_argument("model")
    s.add_argument("--params", required=True, help="a params.npz or checkpoint.npz written by graphc train --out")
    s.add_argument("--data", required=True,
                   help="an NPZ, a directory of .npy files, a CSV or a bundled name: arrays named like the inputs")
    s.add_argument("--map", action="append", default=[], metavar="INPUT=ARRAY",
                   help="feed INPUT from the array ARRAY (e.g. --map x=x_test)")
    s.add_argument("-o", "--output", required=True, help="a .npy (one output), .npz or .csv file")
    s.add_argument("--progress", action="store_true", help="a progress bar even when not on a terminal")
    s.set_defaults(fn=_predict)

    s = sub.add_parser("sample", help="generate text with a trained byte-level language model")
    s.add_argument("model")
    s.add_argument("--params", required=True, help="a params.npz or checkpoint.npz written by graphc train --out")
    s.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    s.add_argument("--tokens", type=_whole(1), default=300, help="bytes to generate (default 300)")
    s.add_argument("--temperature", type=_finite("greedy"), default=0.8,
                   help="divides the logits: 0 picks the likeliest byte, 1 samples the model as it is "
                        "(default 0.8)")
    s.add_argument("--seed", type=_whole(0), default=0, help="seed of the sampling (default 0)")
    s.set_defaults(fn=_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.mpi = None  # the ranks of a data-parallel `graphc train` under mpirun
    try:
        if a.fn is _train:
            from graphc.runtime.train.distributed import launched
            a.mpi = launched()
            if a.mpi and a.mpi.rank:
                sys.stdout = open(os.devnull, "w")  # rank 0 reports
        a.fn(a)
    except BaseException as e:
        try:
            code, message = _failure(a, e)
        except BaseException:
            if a.mpi is None:
                raise
            traceback.print_exc()  # not an error a user can cause: its traceback, and the job ends
            code, message = 1, ""
        if a.mpi is None:
            if message:
                print(message, file=sys.stderr)
            return code
        from graphc.runtime.train.distributed import collective, reports
        if message and reports(e, a.mpi.rank):
            print(f"rank {a.mpi.rank} of {a.mpi.size}: {message}" if a.mpi.rank else message,
                  file=sys.stderr, flush=True)
        if not collective(e):  # this rank failed alone: the others would wait for it forever
            a.mpi.abort(code)
        return code
    return 0


def _failure(a, e: BaseException) -> tuple[int, str]:
    """The exit code of error `e` and the message to print (raises what is not an error to report)."""
    if a.debug and isinstance(e, (GraphcError, InternalError, MemoryError)):
        traceback.print_exc()
    if isinstance(e, GraphcError):
        source = _source(e)  # None: no file to quote, and the error prints without its line
        return 2, str(e.with_source(source) if source is not None else e)
    if isinstance(e, InternalError):
        return 3, str(e)
    if isinstance(e, MemoryError):
        return 2, ("error: out of memory: the model's tensors (times the batch) do not fit in this "
                   "machine's memory")
    if isinstance(e, BrokenPipeError):  # `graphc ir ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0, ""
    if isinstance(e, KeyboardInterrupt):  # the trainer's says where it stopped and what it saved
        return 130, str(e) or "interrupted"
    raise e


if __name__ == "__main__":
    sys.exit(main())
