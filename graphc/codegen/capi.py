"""Generates a model's C library: the native modules, the C glue and the header of lib<model>.so.

The library holds the model's training step and its inference step, both compiled for one batch
size, the worker pool, and C glue around them. A context (`<model>_create`) owns every buffer
the steps touch, the GEMM packing scratch, the pool's threads and the fault words where a kernel
reports an index from data out of range (which the glue turns into a status and a message); the
generated code keeps no state of its own, so contexts are independent. Both steps' pointer
tables index one list of context buffers: leaves (inputs, params, state) and outputs are shared
by name, so the inference step reads the params the training step updates, and a bound input
feeds both. An extern_call's slot (`extern:NAME`) points to the context's {fn, user} pair for NAME,
one per name for both steps, which the host binds with `<model>_set_extern` (an allreduce of the
gradients over MPI ranks, say); a step refuses to run while one of its slots is unbound.

The glue is C rather than LLVM IR: it is bookkeeping (allocation, initializers, name lookup,
threads) that reads best as C, and linking a shared library needs the C toolchain anyway. Its
model-independent half is capi.c; this module appends the model's tables and exported functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast
from importlib import resources

from llvmlite import ir

from graphc.about import __version__
from graphc.codegen.module import build_module, scratch_bytes, table_slots
from graphc.codegen.pool import build_pool, state_bytes
from graphc.codegen.target import Target
from graphc.errors import GraphcError
from graphc.ir.graph import LR, Value
from graphc.ops.registry import declared_indices, index_bound
from graphc.passes.memory import nbytes
from graphc.passes.pipeline import Schedule

TRAIN_ENTRY, INFER_ENTRY = "graphc_train_step", "graphc_infer_step"
_DTYPE = {"f32": "GRAPHC_F32", "f64": "GRAPHC_F64", "i32": "GRAPHC_I32"}
_INIT = {None: "GC_ZERO", "fill": "GC_FILL", "normal": "GC_NORMAL", "uniform": "GC_UNIFORM",
         "truncated_normal": "GC_TRUNCATED_NORMAL", "orthogonal": "GC_ORTHOGONAL"}
_SLOT = {"pool_run": "GC_SLOT_POOL_RUN", "pool": "GC_SLOT_POOL", "fault": "GC_SLOT_FAULT"}

Init = tuple[str, float, float]  # (family, a, b) as graphc.ir.init.Dist


@dataclass
class Library:
    name: str                 # the model's name: the prefix of every exported symbol
    modules: list[ir.Module]  # the training step, the inference step and the pool: one object
    source: str               # the C glue, <name>_capi.c
    header: str               # <name>.h


@dataclass
class _Buffer:
    name: str
    dtype: str
    bytes: int
    init: Init | None  # None: zeros


@dataclass
class _Context:
    """The context's buffers and each step's table as indices into them."""

    buffers: list[_Buffer] = field(default_factory=list)
    index: dict[tuple[str, str], int] = field(default_factory=dict)
    tables: list[list[int | str]] = field(default_factory=list)  # an index, a _SLOT name or extern:NAME
    externs: list[str] = field(default_factory=list)  # the extern slots' NAMEs, in both steps' order

    def add(self, key: tuple[str, str], buf: _Buffer) -> int:
        """The buffer for `key`, added if new; the arena and scratch grow to the largest asked."""
        i = self.index.setdefault(key, len(self.buffers))
        if i == len(self.buffers):
            self.buffers.append(buf)
        elif key[0] == "work":
            self.buffers[i].bytes = max(self.buffers[i].bytes, buf.bytes)
        elif (self.buffers[i].dtype, self.buffers[i].bytes) != (buf.dtype, buf.bytes):
            raise GraphcError(f"{buf.name} has different types in the training and inference steps")
        return i


def build_library(name: str, train: Schedule, infer: Schedule, batch: int | None, inits: Mapping[str, Init],
                  lr: float, target: Target, threads: int, source: str, ranks: int = 1) -> Library:
    """The library of a model `name` from its training and inference schedules, both at `batch`
    (None: the model has no batch dim).

    `inits`: how each param and state value starts; `lr`: the learning rate a context starts
    with; `source`: the model file, named in the header; `ranks`: the processes a data-parallel
    training step was built for (graphc.autodiff.data_parallel), told to the host in the header."""
    if not name.isidentifier() or name == "gc":
        raise GraphcError(f"model name {name!r} cannot prefix C symbols (it must be an identifier, "
                          f"and gc_ is the glue's own prefix): rename the net")
    # inputs start at their defaults, the learning rate at the train block's
    inits = {**inits, **{i.value.name: ("fill", i.default, 0.0) for s in (train, infer) for i in s.graph.inputs
                         if i.default is not None}, LR: ("fill", lr, 0.0)}
    ctx = _Context()
    for sched in (train, infer):
        ctx.tables.append(_table(ctx, sched, inits, target, threads))
    modules = [build_module(train, target, TRAIN_ENTRY, threads),
               build_module(infer, target, INFER_ENTRY, threads)]
    for m, entry in zip(modules, (TRAIN_ENTRY, INFER_ENTRY)):
        for f in m.functions:  # both steps define the same GEMM helpers: each keeps its own
            if not f.is_declaration and f.name != entry:
                f.linkage = "internal"
    modules.append(build_pool(target))
    t = train.graph
    leaf = lambda v: (v.name, v, ctx.index[("leaf", v.name)])
    outputs: dict[str, tuple[str, Value, int]] = {}  # name -> (name, value, buffer)
    writers: dict[str, list[str]] = {}  # name -> the functions whose step writes it
    for sched, table, step in ((train, ctx.tables[0], "train_step"), (infer, ctx.tables[1], "infer")):
        for k, v in sched.graph.outputs.items():
            outputs.setdefault(k, (k, v, cast(int, table[sched.plan.place[v][0]])))  # a buffer, not a slot
            writers.setdefault(k, []).append(f"{name}_{step}")
    named: dict[str, list[tuple[str, Value, int]]] = {"inputs": [leaf(i.value) for i in t.inputs if i.value.name != LR],
             "outputs": list(outputs.values()), "params": [leaf(p.value) for p in t.params + t.state]}
    checks = [_checks(sched, [n for n, _, _ in named["inputs"]]) for sched in (train, infer)]
    loss_buffer = next(buf for k, _, buf in outputs.values() if k == t.loss)
    glue = _source(name, ctx, named, checks, [_sites(train), _sites(infer)], ctx.index[("leaf", LR)],
                   loss_buffer, threads, state_bytes(target))
    ranges = {named["inputs"][i][0]: f"values 0..{bound - 1}, checked by each step" for i, bound in
              sorted(set(checks[0] + checks[1]))}
    header = _header(name, named, ranges, {k: ", ".join(w) for k, w in writers.items()},
                     {p.value.name: f"{p.init}()" for p in t.params + t.state}, ctx.externs, batch, threads,
                     lr, source, target.cpu, ranks)
    return Library(name, modules, glue, header)


def _table(ctx: _Context, sched: Schedule, inits: Mapping[str, Init], target: Target,
           threads: int) -> list[int | str]:
    g = sched.graph
    leaves = {v.name: v for v in g.leaves()}
    row: list[int | str] = []
    for buf in sched.plan.buffers:
        if buf.role == "arena":
            row.append(ctx.add(("work", "arena"), _Buffer("arena", "f32", sched.plan.arena_bytes, None)))
        elif buf.role == "output":
            v = g.outputs[buf.name]
            init = None if v.const is None else ("fill", v.const, 0.0)
            row.append(ctx.add(("output", buf.name), _Buffer(buf.name, v.dtype, nbytes(v), init)))
        else:
            v = leaves[buf.name]
            row.append(ctx.add(("leaf", buf.name), _Buffer(buf.name, v.dtype, nbytes(v), inits.get(buf.name))))
    for slot in table_slots(sched, threads):
        if slot == "scratch":
            row.append(ctx.add(("work", "scratch"),
                               _Buffer("scratch", "f32", scratch_bytes(sched, target, threads), None)))
        else:  # a _SLOT, or extern:NAME, pointing to the context's {fn, user} for NAME
            if slot not in _SLOT and slot.removeprefix("extern:") not in ctx.externs:
                ctx.externs.append(slot.removeprefix("extern:"))
            row.append(slot)
    return row


def _sites(sched: Schedule) -> list[tuple[int, int, str]]:
    """(kernel + 1, site, what) for each node whose kernel reports a bad index from data into the
    fault slot, numbered as codegen.kernels.Fault reports them; `what` names it in the message, and
    the model's input it indexes with, if it is one."""
    inputs = {id(i.value) for i in sched.graph.inputs}
    sites = []
    for k, kernel in enumerate(sched.every_kernel()):
        for j, n in enumerate(kernel.nodes if kernel.indexes_data else []):
            indices = declared_indices(n)  # a gather's, a scatter's: the nodes that report
            if indices:
                named = [n.inputs[i].name for i in indices if id(n.inputs[i]) in inputs]
                what = n.op + (f" of input {named[0]}" if named else "")
                sites.append((k + 1, j + 1, f"{n.loc}: {what}" if n.loc else what))
    return sites


def _checks(sched: Schedule, inputs: list[str]) -> list[tuple[int, int]]:
    """(position in `inputs`, bound) of each integer input the step indexes with (labels)."""
    bounds = ((i.value.name, index_bound(sched.graph, i.value)) for i in sched.graph.inputs
              if not i.value.type.is_float)
    return [(inputs.index(n), b) for n, b in bounds if isinstance(b, int)]


def _c_list(items: list[str], per_line: int = 1) -> str:
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if items else "{0}"


def _source(name: str, ctx: _Context, named: dict[str, list[tuple[str, Value, int]]],
            checks: list[list[tuple[int, int]]], sites: list[list[tuple[int, int, str]]], lr_buffer: int,
            loss_buffer: int, threads: int, pool_bytes: int) -> str:
    runtime = resources.files("graphc.codegen").joinpath("capi.c").read_text()
    out = [f"/* The C glue of lib{name}: generated by graphc {__version__}; do not edit. */",
           f'#include "{name}.h"', "", runtime, "/* ---- the model ---- */"]
    shapes: list[int] = []  # every dim of every named tensor; each info points at its own
    tables = []
    for kind, items in named.items():
        infos = []
        for n, v, _ in items:
            infos.append(f"{{{json.dumps(n)}, {_DTYPE[v.dtype]}, {len(v.shape)}, GC_SHAPES + {len(shapes)}, "
                         f"{math.prod(v.dims)}}}")
            shapes += v.dims
        tables.append(f"static const graphc_tensor_info GC_{kind.upper()}[] = {_c_list(infos)};")
        tables.append(f"static const int GC_{kind.upper()}_BUFFER[] = "
                      f"{_c_list([str(b) for _, _, b in items], 16)};")
    out.append(f"static const int64_t GC_SHAPES[] = {_c_list([str(d) for d in shapes], 16)};")
    out += tables
    bufs = [f"{{{json.dumps(b.name)}, {b.bytes}, {_DTYPE[b.dtype]}, {_INIT[b.init and b.init[0]]}, "
            f"{b.init[1] if b.init else 0.0!r}, {b.init[2] if b.init else 0.0!r}}}" for b in ctx.buffers]
    out.append(f"static const gc_buffer GC_BUFFERS[] = {_c_list(bufs)};")
    out.append(f"static const char *const GC_EXTERNS[] = {_c_list([json.dumps(e) for e in ctx.externs])};")
    for step, table, step_checks, step_sites in zip(("TRAIN", "INFER"), ctx.tables, checks, sites):
        slots = [str(s) if isinstance(s, int) else _SLOT.get(s) or
                 f"GC_SLOT_EXTERN - {ctx.externs.index(s.removeprefix('extern:'))}" for s in table]
        out.append(f"static const int GC_{step}_SLOTS[] = {_c_list(slots, 8)};")
        out.append(f"static const gc_check GC_{step}_CHECKS[] = "
                   f"{_c_list([f'{{{i}, {b}}}' for i, b in step_checks])};")
        out.append(f"static const gc_site GC_{step}_SITES[] = "
                   f"{_c_list([f'{{{k}, {j}, {json.dumps(what)}}}' for k, j, what in step_sites])};")
    out += [f"void {TRAIN_ENTRY}(void **table);", f"void {INFER_ENTRY}(void **table);", f"""
static const gc_model GC_MODEL = {{
    "{name}", {len(ctx.buffers)}, GC_BUFFERS,
    {{{{{TRAIN_ENTRY}, {len(ctx.tables[0])}, GC_TRAIN_SLOTS, {len(checks[0])}, GC_TRAIN_CHECKS,
      {len(sites[0])}, GC_TRAIN_SITES}},
     {{{INFER_ENTRY}, {len(ctx.tables[1])}, GC_INFER_SLOTS, {len(checks[1])}, GC_INFER_CHECKS,
      {len(sites[1])}, GC_INFER_SITES}}}},
    {{{len(named['inputs'])}, GC_INPUTS, GC_INPUTS_BUFFER}},
    {{{len(named['outputs'])}, GC_OUTPUTS, GC_OUTPUTS_BUFFER}},
    {{{len(named['params'])}, GC_PARAMS, GC_PARAMS_BUFFER}},
    {len(ctx.externs)}, GC_EXTERNS, {json.dumps(', '.join(ctx.externs) or 'none')},
    {lr_buffer}, {loss_buffer}, {threads}, {pool_bytes}
}};

/* ---- the exported functions (see {name}.h) ---- */
#define GC_API __attribute__((visibility("default")))
#define GC(ctx) ((gc_ctx *)(ctx))

GC_API {name}_ctx *{name}_create(uint64_t seed) {{ return ({name}_ctx *)gc_create(&GC_MODEL, seed); }}
GC_API void {name}_destroy({name}_ctx *ctx) {{ gc_destroy(GC(ctx)); }}
"""]
    for kind in ("input", "output", "param"):
        names = f"GC_MODEL.{kind}s"
        out.append(f"GC_API int {name}_num_{kind}s(void) {{ return {names}.n; }}\n"
                   f"GC_API const graphc_tensor_info *{name}_{kind}_info(int i) {{\n"
                   f"    return i >= 0 && i < {names}.n ? &{names}.info[i] : NULL;\n}}")
    out.append(f"""GC_API void *{name}_input({name}_ctx *ctx, const char *name) {{
    return gc_lookup(GC(ctx), &GC_MODEL.inputs, name);
}}
GC_API int {name}_set_input({name}_ctx *ctx, const char *name, const void *data) {{
    return gc_copy_in(GC(ctx), &GC_MODEL.inputs, name, data);
}}
GC_API int {name}_bind_input({name}_ctx *ctx, const char *name, void *data) {{
    return gc_bind(GC(ctx), name, data);
}}
GC_API int {name}_set_lr({name}_ctx *ctx, double lr) {{ return gc_set_lr(GC(ctx), lr); }}
GC_API int {name}_train_step({name}_ctx *ctx, double *loss) {{ return gc_train_step(GC(ctx), loss); }}
GC_API int {name}_infer({name}_ctx *ctx) {{ return gc_run(GC(ctx), GC_INFER); }}
GC_API int {name}_set_extern({name}_ctx *ctx, const char *slot, graphc_extern_fn fn, void *user) {{
    return gc_set_extern(GC(ctx), slot, fn, user);
}}
GC_API const char *{name}_error({name}_ctx *ctx) {{ return ctx ? GC(ctx)->error : NULL; }}
GC_API const void *{name}_output({name}_ctx *ctx, const char *name) {{
    return gc_lookup(GC(ctx), &GC_MODEL.outputs, name);
}}
GC_API int {name}_get_param({name}_ctx *ctx, const char *name, void *out) {{
    return gc_copy_out(GC(ctx), &GC_MODEL.params, name, out);
}}
GC_API int {name}_set_param({name}_ctx *ctx, const char *name, const void *data) {{
    return gc_copy_in(GC(ctx), &GC_MODEL.params, name, data);
}}
""")
    return "\n".join(out)


def _listing(items: list[tuple[str, Value, int]], note: dict[str, str]) -> list[str]:
    width = max((len(n) for n, _, _ in items), default=0)
    types = max((len(str(v.type)) for _, v, _ in items), default=0)
    return [f" *   {n:<{width}}  {str(v.type):<{types}}  {note.get(n, '')}".rstrip() for n, v, _ in items]


def _header(name: str, named: dict[str, list[tuple[str, Value, int]]], ranges: dict[str, str],
            written_by: dict[str, str], init: dict[str, str], externs: list[str], batch: int | None,
            threads: int, lr: float, source: str, cpu: str, ranks: int) -> str:
    up = name.upper()
    ctx = f"{name}_ctx"
    listing = ([" * Inputs (every one is read by the training step; the inference step reads those it needs):"]
               + _listing(named["inputs"], ranges)
               + [" * Outputs (the step that writes each):"]
               + _listing(named["outputs"], written_by)
               + [" * Params, then the training state (optimizer moments, running statistics, counters):",
                  " * all read and written by name with get_param / set_param, so a host can checkpoint",
                  " * a run; each starts at its initializer:"]
               + _listing(named["params"], init)
               + [f" * (the learning rate, an input of the training step too, is set with {name}_set_lr)"]
               + [" * Extern slots (functions the host binds with set_extern before a step calls them):",
                  f" *   {', '.join(externs)}"] * bool(externs))
    return f"""/* {name}.h: the C interface of lib{name}, the graphc model `{name}` ({source}).
 * Generated by graphc {__version__}; do not edit.
 *
 * The library trains and runs the model with native code graphc generated: {name}_train_step runs
 * one whole training step (forward, backward, optimizer update) and {name}_infer one forward pass.
 * Both work on exactly {up}_BATCH samples, the batch size fixed when the library was compiled
 * (graphc compile --batch). Tensors are dense, row-major C arrays of the dtype listed
 * (f32: float, f64: double, i32: int32_t). The native code is compiled for the CPU of the machine
 * that compiled it ({cpu}, with all its features): run it on that kind of CPU.
 *
 * All state lives in a context: params, optimizer state, inputs, outputs, scratch, and the
 * {up}_THREADS - 1 worker threads it starts (graphc compile --threads; idle workers sleep).
 * The library has no global state: contexts are independent, and different contexts may be used
 * from different threads at once; one context must be used by one thread at a time.
 *
 * Functions that can fail return an enum graphc_status (0 is success) or NULL; when a step (or
 * set_extern) fails, {name}_error says why. A NULL context is refused (GRAPHC_EINVAL or NULL;
 * ignored by destroy); a context used after {name}_destroy, or destroyed twice, cannot be told
 * from a live one: that is undefined behaviour, as with free().
 *
{chr(10).join(listing)}
 *
 * Build a program against it: cc app.c -I DIR -L DIR -l{name} -Wl,-rpath,DIR
 */
#ifndef GRAPHC_{up}_H
#define GRAPHC_{up}_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#ifndef GRAPHC_TENSOR_INFO
#define GRAPHC_TENSOR_INFO /* shared by the headers of all graphc libraries */
enum graphc_dtype {{ GRAPHC_F32 = 0, GRAPHC_F64 = 1, GRAPHC_I32 = 2 }};

/* The name, dtype and shape of a tensor the library reads or writes. */
typedef struct graphc_tensor_info {{
    const char *name;     /* e.g. "fc1.W" */
    int dtype;            /* enum graphc_dtype */
    int rank;             /* number of dims; 0 for a scalar */
    const int64_t *shape; /* rank dims */
    int64_t size;         /* number of elements: the product of the dims */
}} graphc_tensor_info;
#endif

#ifndef GRAPHC_STATUS
#define GRAPHC_STATUS /* shared by the headers of all graphc libraries */
enum graphc_status {{
    GRAPHC_OK = 0,
    GRAPHC_EINVAL = -1, /* a NULL context or pointer, an unknown name, a learning rate not finite,
                         * a step calling an extern slot with no function bound: nothing ran */
    GRAPHC_ERANGE = -2, /* an integer input (labels, tokens) holds a value outside its range: nothing ran */
    GRAPHC_EINDEX = -3  /* an index the step computed (a gather's inside a scan) was outside its range:
                         * the step ran on, reading row 0 for it, so its outputs and update are wrong */
}};
#endif

#ifndef GRAPHC_EXTERN_FN
#define GRAPHC_EXTERN_FN /* shared by the headers of all graphc libraries */
/* A function a step calls at an extern_call (bound with <model>_set_extern): it updates the count
 * values at data, of dtype enum graphc_dtype, in place, e.g. MPI_Allreduce(MPI_IN_PLACE, ...);
 * user is the pointer given with it. It runs on the thread that called the step. */
typedef void (*graphc_extern_fn)(void *user, void *data, int64_t count, int32_t dtype);
#endif

#define {up}_BATCH {batch or 1} /* samples per step (compiled in{'' if batch else ': the model has no batch dim'}) */
#define {up}_THREADS {threads} /* threads a context computes with (compiled in) */
/* Processes that train together (graphc compile --ranks, compiled in): with more than one, each
 * feeds {up}_BATCH rows of every global batch and binds slot allreduce to a sum over them all. */
#define {up}_RANKS {ranks}

typedef struct {ctx} {ctx}; /* a model instance: all its buffers and threads */

/* A new context: buffers 64-byte aligned, params drawn from their initializers with `seed`
 * (a counter-based generator: the same seed gives the same params on every machine, though not
 * the values graphc's Python runtime draws), the training state at its initializers, learning
 * rate {lr:g} (the train block's), other inputs zero or their defaults. NULL if memory or threads
 * cannot be had. */
{ctx} *{name}_create(uint64_t seed);

/* Stops the context's threads and frees everything it owns (NULL is ignored; twice is undefined). */
void {name}_destroy({ctx} *ctx);

/* The model's inputs, outputs and params (then its training state), as listed above: how many,
 * and the i-th one's name, dtype and shape (NULL when i is out of range). The info is static:
 * valid for the library's lifetime. */
int {name}_num_inputs(void);
const graphc_tensor_info *{name}_input_info(int i);
int {name}_num_outputs(void);
const graphc_tensor_info *{name}_output_info(int i);
int {name}_num_params(void);
const graphc_tensor_info *{name}_param_info(int i);

/* The buffer the steps read input `name` from, to fill in place (NULL for an unknown name). */
void *{name}_input({ctx} *ctx, const char *name);

/* Copies input `name` (its size elements) into the context's own buffer, which the steps then
 * read (undoing a bind). Returns GRAPHC_OK, or GRAPHC_EINVAL for an unknown name or NULL data. */
int {name}_set_input({ctx} *ctx, const char *name, const void *data);

/* Makes the steps read input `name` straight from `data` (no copy) until it is bound again or set;
 * `data` NULL returns to the context's own buffer. `data` must hold the input's size elements,
 * stay valid while bound and not overlap any other buffer; 64-byte alignment is fastest.
 * Returns GRAPHC_OK, or GRAPHC_EINVAL for an unknown name. */
int {name}_bind_input({ctx} *ctx, const char *name, void *data);

/* Sets the learning rate the following training steps use. Returns GRAPHC_OK, or GRAPHC_EINVAL
 * (nothing set) for a NaN or infinite rate. */
int {name}_set_lr({ctx} *ctx, double lr);

/* Runs one training step on the current inputs: forward, backward and the optimizer's update of
 * the params, all in generated native code, and stores the loss (the batch mean, before the
 * update) in *loss unless `loss` is NULL. Returns GRAPHC_OK; GRAPHC_ERANGE when an integer input
 * holds a value outside its range (listed above: a label that names no class, a token past the
 * embedding's rows), and then nothing runs and the params are unchanged; or GRAPHC_EINDEX when a
 * gather or scatter met an index out of range that no input check could see coming (one computed
 * inside a scan). {name}_error names the input or op, and the index. A step that calls an extern
 * slot left unbound returns GRAPHC_EINVAL, and nothing runs. */
int {name}_train_step({ctx} *ctx, double *loss);

/* Runs the forward pass for inference on the current inputs (with the params as they are) and
 * writes its outputs; returns as {name}_train_step does. To predict fewer than {up}_BATCH
 * samples, fill the unused rows with anything (zeros) and ignore their outputs: a row's
 * prediction depends on that row only unless the model itself mixes samples across the batch. */
int {name}_infer({ctx} *ctx);

/* Binds extern slot `slot` ({'listed above' if externs else 'this model has none'}) to fn and user: each step that calls it calls
 * fn(user, data, count, dtype) there; fn NULL unbinds it. Returns GRAPHC_OK, or GRAPHC_EINVAL for
 * an unknown slot, which {name}_error names. */
int {name}_set_extern({ctx} *ctx, const char *slot, graphc_extern_fn fn, void *user);

/* Why the last {name}_train_step, {name}_infer or {name}_set_extern on ctx failed, as one line
 * ("" after one that succeeded): "input y: element 3 is 12, out of range [0, 10); nothing ran", or
 * "model.net:9:15: gather of t: index 9 out of range [0, 7)". Owned by the context and valid
 * until its next such call; NULL for a NULL context. */
const char *{name}_error({ctx} *ctx);

/* Output `name` as the step that writes it last left it (see the list above), or NULL for an
 * unknown name. The buffer belongs to the context: read it, don't free it. */
const void *{name}_output({ctx} *ctx, const char *name);

/* Copies param (or training state) `name`, its size elements, out to `out` / in from `data`.
 * Returns GRAPHC_OK, or GRAPHC_EINVAL for an unknown name or a NULL pointer. */
int {name}_get_param({ctx} *ctx, const char *name, void *out);
int {name}_set_param({ctx} *ctx, const char *name, const void *data);

#ifdef __cplusplus
}}
#endif

#endif /* GRAPHC_{up}_H */
"""
