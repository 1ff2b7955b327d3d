"""Exports a model's inference graph as ONNX (standard opset), built with the onnx package's helper API.

EMITTERS maps each graphc op to the ONNX node(s) computing it, one entry per op (one that ONNX
lacks, such as gelu, as the primitives graphc decomposes it into); NOT_EXPORTABLE
lists the others, each with its reason, and exporting one is an error naming it. Batch norm needs
no entry: it is built from primitives, and
its evaluation form reads the running statistics, exported as initializers. The batch dim stays
symbolic, the inputs are what the model reads (samples in its input shape, pixels scaled to [0, 1]
as graphc's data loaders do), and the outputs are its predictions (the logits).

A graph and a scan's body are written by the same walk over their nodes (OnnxBuilder.graph): a
scan becomes one ONNX Scan node whose body is a subgraph, with one output per result of the scan.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from graphc.about import __version__
from graphc.autodiff.graphs import inference_graph
from graphc.errors import GraphcError
from graphc.ir.graph import NP_DTYPES, Builder, Dim, Graph, Node, TensorType, Value
from graphc.ops import REGISTRY
from graphc.ops.conv import geometry, pool_window
from graphc.ops.lowering import Decompose

if TYPE_CHECKING:
    import onnx

OPSET = 18
_INPUT_DOC = ("as the model reads it: samples in the input's shape, pixels scaled to [0, 1] "
              "(graphc's data loaders divide image bytes by 255)")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise GraphcError("ONNX export needs the onnx package: pip install 'graphc[onnx]'") from None
    return onnx


class OnnxBuilder:
    """Collects ONNX nodes and initializers for one graph (a model's, or a scan body's: a child of
    the builder of the graph holding the scan); each graphc value maps to an ONNX name."""

    def __init__(self, model: str, parent: OnnxBuilder | None = None) -> None:
        self.onnx = _onnx()
        self.model = model  # what an error names
        self.nodes: list["onnx.NodeProto"] = []
        self.inits: list["onnx.TensorProto"] = []
        self.names: dict[Value, str] = {}
        self.literals: dict[tuple[float, TensorType], str] = {}
        self.loops: dict[tuple[int, bool, tuple[str, ...]], list[str]] = {}  # a scan's ONNX outputs
        # one counter for a model and its bodies: ONNX wants names unique across all its graphs
        self._count: Iterator[int] = parent._count if parent else itertools.count(1)
        # where each symbolic dim can be read at run time: (ONNX name, axis); a body sees the outer
        # graph's values, so it reads them where its parent does
        self.dim_source: dict[str, tuple[str, int]] = dict(parent.dim_source) if parent else {}

    def bind(self, v: Value, name: str) -> None:
        """Value v is ONNX name `name`; the first one bound with a symbolic dim is where it is read."""
        self.names[v] = name
        for axis, d in enumerate(v.shape):
            if isinstance(d, str):
                self.dim_source.setdefault(d, (name, axis))

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._count)}"

    def elem(self, dtype: str) -> int:
        return self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype]))

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values: Any) -> str:
        return self.const(np.array(values, np.int64), "ints")

    def node(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        return self.multi(op_type, inputs, 1, **attrs)[0]

    def multi(self, op_type: str, inputs: list[str], count: int, **attrs: Any) -> list[str]:
        """A node with `count` outputs; returns their names."""
        outs = [self.fresh(op_type.lower()) for _ in range(count)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs

    def shape(self, dims: tuple[Dim, ...]) -> str:
        """An int64 shape tensor; symbolic dims are read from the input that has them."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(list(dims))
        parts = []
        for d in dims:
            if isinstance(d, int):
                parts.append(self.ints([d]))
            else:
                name, axis = self.dim_source[d]
                parts.append(self.node("Shape", [name], start=axis, end=axis + 1))
        return self.node("Concat", parts, axis=0)

    def ref(self, v: Value) -> str:
        """The ONNX name of a value; a literal becomes a constant (every element equal), one per
        number and type, so equal literals are one name (a scan's results group by their names)."""
        if v.const is None:
            return self.names[v]
        key = (v.const, v.type)
        if key not in self.literals:
            scalar = self.const(np.array(v.const, NP_DTYPES[v.dtype]), "literal")
            self.literals[key] = self.node("Expand", [scalar, self.shape(v.shape)]) if v.shape else scalar
        return self.literals[key]

    def emit(self, nodes: list[Node]) -> None:
        """Each node as its EMITTERS entry writes it, in order."""
        for n in nodes:
            rule = EMITTERS.get(n.op)
            if rule is None:
                raise GraphcError(f"op {n.op} has no ONNX mapping, so {self.model} cannot be exported", n.loc)
            self.names[n.out] = rule(self, n, [self.ref(v) for v in n.inputs])

    def graph(self, g: Graph, inputs: dict[str, Value], outputs: dict[str, Value],
              input_doc: str = "") -> "onnx.GraphProto":
        """g's nodes as an ONNX graph with these inputs and outputs (ONNX name -> value); values
        bound before (params, a body's loop invariants) are read by their names."""
        helper = self.onnx.helper
        for name, v in inputs.items():
            self.bind(v, name)
        self.emit(g.nodes)
        for name, v in outputs.items():
            self.nodes.append(helper.make_node("Identity", [self.ref(v)], [name], name=name))
        info = lambda name, v, doc="": helper.make_tensor_value_info(name, self.elem(v.dtype), list(v.shape), doc)
        return helper.make_graph(self.nodes, g.name, [info(k, v, input_doc) for k, v in inputs.items()],
                                 [info(k, v) for k, v in outputs.items()], initializer=self.inits)


Emitter = Callable[[OnnxBuilder, Node, list[str]], str]


def _op(op_type: str) -> Emitter:
    return lambda e, n, xs: e.node(op_type, xs)


def _compare(op_type: str) -> Emitter:
    """graphc comparisons give 1.0/0.0 in the operands' float type."""
    return lambda e, n, xs: e.node("Cast", [e.node(op_type, xs)], to=e.elem(n.out.dtype))


def _reduce(op_type: str) -> Emitter:
    def emit(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
        axes = n.attrs["axes"]
        if axes is not None:  # absent: over every axis
            xs = xs + [e.ints([axes] if isinstance(axes, int) else list(axes))]
        return e.node(op_type, xs, keepdims=int(n.attrs["keepdims"]))
    return emit


def _window(n: Node) -> dict[str, list[int]]:
    """Pooling geometry as the op defines it (graphc.ops.conv); padding is the same on both sides."""
    kernel, stride, padding, _ = geometry(pool_window(n.attrs))
    return {"kernel_shape": list(kernel), "strides": list(stride), "pads": list(padding) * 2}


def _matmul(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    if n.inputs[0].type.rank == n.inputs[1].type.rank == 2:
        return e.node("Gemm", xs, transA=int(n.attrs["ta"]), transB=int(n.attrs["tb"]))
    swap = lambda x, v: e.node("Transpose", [x], perm=[*range(v.type.rank - 2), v.type.rank - 1, v.type.rank - 2])
    a, b = (swap(x, v) if n.attrs[t] else x for x, v, t in zip(xs, n.inputs, ("ta", "tb")))
    return e.node("MatMul", [a, b])


def _transpose(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    rank = len(n.inputs[0].shape)
    perm = n.attrs["perm"]
    return e.node("Transpose", xs, perm=list(reversed(range(rank))) if perm is None
                  else [p % rank for p in perm])


def _onehot(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    values = e.const(np.array([0, 1], NP_DTYPES[n.out.dtype]))
    depth = e.const(np.array([n.attrs["n"]], np.int32))  # onnxruntime wants depth typed like the labels
    return e.node("OneHot", [xs[0], depth, values], axis=-1)


def _slice(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    return e.node("Slice", [xs[0]] + [e.ints([n.attrs[k]]) for k in ("start", "stop", "axis")])


def _pad(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    value = e.const(np.array(n.attrs["value"], NP_DTYPES[n.out.dtype]))
    return e.node("Pad", [xs[0], e.ints([n.attrs["before"], n.attrs["after"]]), value,
                          e.ints([n.attrs["axis"]])], mode="constant")


def _scatter_add(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    """Zeros, then ScatterND adding each index position's values (repeated indices add up)."""
    g, idx = xs
    zeros = e.node("ConstantOfShape", [e.shape(n.out.shape)],
                   value=e.onnx.numpy_helper.from_array(np.zeros(1, NP_DTYPES[n.out.dtype])))
    rows = e.node("Unsqueeze", [e.node("Cast", [idx], to=e.onnx.TensorProto.INT64), e.ints([-1])])
    return e.node("ScatterND", [zeros, rows, g], reduction="add")


def _conv2d(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    _, stride, padding, dilation = geometry({**n.attrs, "kernel": 1})  # the kernel is w's shape
    return e.node("Conv", xs, strides=list(stride), pads=list(padding) * 2, dilations=list(dilation),
                  group=n.attrs["groups"])


def _iota(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    """Each element's index along `axis`: a Range, shaped to broadcast along it, then expanded."""
    rank, axis = n.out.type.rank, n.attrs["axis"] % n.out.type.rank
    size = n.out.shape[axis]
    zero, step = (e.const(np.array(v, NP_DTYPES[n.out.dtype])) for v in (0, 1))
    count = e.node("Cast", [e.shape((size,))], to=e.elem(n.out.dtype))
    line = e.node("Range", [zero, e.node("Squeeze", [count, e.ints([0])]), step])
    column = e.node("Reshape", [line, e.ints([-1 if a == axis else 1 for a in range(rank)])])
    return e.node("Expand", [column, e.shape(n.out.shape)])


def _decomposed(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    """An op ONNX lacks (gelu: opset 18 has no Gelu), as the primitives graphc decomposes it into."""
    rule = REGISTRY[n.op].lowering
    assert isinstance(rule, Decompose)
    g = Graph(n.op)
    operands = [Value(f"x{i}", v.type) for i, v in enumerate(n.inputs)]
    e.names.update(zip(operands, xs))
    out = rule.fn(Builder(g, n.loc, n.scope), *operands, **n.attrs)
    e.emit(g.nodes)
    return e.ref(out)


def _scan(e: OnnxBuilder, n: Node, xs: list[str]) -> str:
    """All results of one scan are one ONNX Scan node (written at its first result): ONNX Scan's
    state variables, scan inputs (read along axis 0, backwards by scan_input_directions) and
    stacked scan outputs (scan_output_directions puts a reverse scan's step t at index t) are
    graphc's carries, xs and ys one for one. Scan has no loop-invariant inputs: the body reads
    them from the outer graph by name, as an ONNX subgraph may. Loop would need a trip count, a
    Gather of xs[t] per step and, running backwards, a flip of its stacked outputs."""
    body, k, m = n.attrs["body"], n.attrs["carries"], n.attrs["xs"]
    rev = int(n.attrs["reverse"])
    key = (id(body), n.attrs["reverse"], tuple(xs))  # fuse.same_loop, by ONNX name (a literal has one)
    if key not in e.loops:
        sub = OnnxBuilder(e.model, e)
        ins = [i.value for i in body.inputs]
        sub.names.update(zip(ins[k + m:], xs[k + m:]))
        graph = sub.graph(body, {e.fresh(v.name): v for v in ins[:k + m]},
                          {e.fresh(name): v for name, v in body.outputs.items()})
        ys = len(body.outputs) - k
        directions = {"scan_input_directions": [rev] * m, "scan_output_directions": [rev] * ys}
        e.loops[key] = e.multi("Scan", xs[:k + m], k + ys, body=graph, num_scan_inputs=m,
                               **{a: d for a, d in directions.items() if d})  # helper cannot type []
    return e.loops[key][n.attrs["result"]]


EMITTERS: dict[str, Emitter] = {
    "add": _op("Add"), "sub": _op("Sub"), "mul": _op("Mul"), "div": _op("Div"), "pow": _op("Pow"),
    "gt": _compare("Greater"), "eq": _compare("Equal"),
    "neg": _op("Neg"), "exp": _op("Exp"), "log": _op("Log"), "sqrt": _op("Sqrt"), "tanh": _op("Tanh"),
    "sigmoid": _op("Sigmoid"), "relu": _op("Relu"), "maximum": _op("Max"), "minimum": _op("Min"),
    "sin": _op("Sin"), "cos": _op("Cos"), "floor": _op("Floor"), "erf": _op("Erf"),
    "leaky_relu": lambda e, n, xs: e.node("LeakyRelu", xs, alpha=float(n.attrs["alpha"])),
    "gelu": _decomposed,
    "scan": _scan,
    "broadcast_to": lambda e, n, xs: e.node("Expand", [xs[0], e.shape(n.out.shape)]),
    "transpose": _transpose,
    "reshape": lambda e, n, xs: e.node("Reshape", [xs[0], e.shape(n.out.shape)]),
    "flatten": lambda e, n, xs: e.node("Flatten", xs, axis=1),
    "slice": _slice,
    "pad": _pad,
    "concat": lambda e, n, xs: e.node("Concat", xs, axis=n.attrs["axis"]),
    "onehot": _onehot,
    "iota": _iota,
    "where": lambda e, n, xs: e.node("Where", [e.node("Cast", [xs[0]], to=e.onnx.TensorProto.BOOL), *xs[1:]]),
    "gather": lambda e, n, xs: e.node("Gather", xs, axis=0),
    "scatter_add": _scatter_add,
    "sum": _reduce("ReduceSum"), "max": _reduce("ReduceMax"), "mean": _reduce("ReduceMean"),
    "matmul": _matmul,
    "softmax": lambda e, n, xs: e.node("Softmax", xs, axis=n.attrs["axis"]),
    "log_softmax": lambda e, n, xs: e.node("LogSoftmax", xs, axis=n.attrs["axis"]),
    "conv2d": _conv2d,
    "max_pool2d": lambda e, n, xs: e.node("MaxPool", xs, **_window(n)),
    "avg_pool2d": lambda e, n, xs: e.node("AveragePool", xs, count_include_pad=1, **_window(n)),
    "global_avg_pool": lambda e, n, xs: e.node("Squeeze", [e.node("GlobalAveragePool", xs),
                                                           e.ints([2, 3])]),  # [N,C,1,1] -> [N,C]
}


# ops with no ONNX form, and why: the inference graph has no losses or metrics and no dropout (its
# evaluation form), window/fold/fold_taps exist only inside graphc's lowering of convolutions and
# pooling, an external call is a function the runtime binds (pack and unpack gather what it moves:
# only data-parallel training steps have them)
NOT_EXPORTABLE = {"softmax_cross_entropy", "mse", "mae", "accuracy", "dropout", "window", "fold", "fold_taps",
                  "extern_call", "pack", "unpack"}


def to_onnx(fwd: Graph, arrays: dict[str, np.ndarray]) -> "onnx.ModelProto":
    """The inference graph of forward graph `fwd` (for a model with dropout or batch norm, its
    evaluation form) as an ONNX model; `arrays` (params and state by name) become initializers."""
    onnx = _onnx()
    g = inference_graph(fwd)
    e = OnnxBuilder(fwd.name)
    helper = onnx.helper
    for p in g.params + g.state:  # state: batch norm's running statistics
        if p.value.name not in arrays:
            raise GraphcError(f"no array for {p.value.name} {p.value.type}: export needs the trained "
                              f"params and state", p.loc)
        e.bind(p.value, p.value.name)
        e.inits.append(onnx.numpy_helper.from_array(
            np.asarray(arrays[p.value.name], NP_DTYPES[p.value.dtype]), p.value.name))
    graph = e.graph(g, {i.value.name: i.value for i in g.inputs}, g.outputs, _INPUT_DOC)
    opset = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opset, producer_name="graphc",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opset),
                              doc_string=f"graphc inference graph of {fwd.name}")
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(fwd: Graph, arrays: dict[str, np.ndarray], path: Path) -> str:
    """Export to the file `path`; returns a one-line summary (opset, nodes, inputs -> outputs)."""
    model = to_onnx(fwd, arrays)
    try:
        _onnx().save(model, str(path))
    except OSError as e:
        raise GraphcError(f"cannot write {path}: {e.strerror or e}") from None
    dims = lambda v: ",".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)
    sig = lambda vs: ", ".join(f"{v.name}[{dims(v)}]" for v in vs)
    return (f"ONNX opset {OPSET}, {len(model.graph.node)} nodes: "
            f"{sig(model.graph.input)} -> {sig(model.graph.output)}")
