"""Compile time follows a model's distinct kernels: a repeated layer's kernels share one function
each, so LLVM's work does not grow with the number of layers (bench/compile_time.py times it)."""

from __future__ import annotations

from graphc import driver
from graphc.codegen.module import build_module
from graphc.codegen.target import host_target
from graphc.frontend import load_source
from graphc.passes.pipeline import schedule

DENSE = """
net deep
dim B
input h0 : f32[B, 16]
input y : i32[B] nograd
layer dense(h: f32[B, I], units: int, act: fn = relu) -> f32[B, units] {{
  param W : f32[I, units] = he_normal()
  param b : f32[units] = zeros()
  return act(h @ W + b)
}}
{layers}
logits = dense(h{last}, units=4, act=id) as out
loss = softmax_cross_entropy(logits, y)
train {{ optimizer = sgd(lr=0.1, momentum=0.9) batch = 8 epochs = 1 seed = 0 }}
"""


def _kernels_and_functions(depth: int, threads: int) -> tuple[int, int]:
    layers = "\n".join(f"h{i + 1} = dense(h{i}, units=16) as fc{i + 1}" for i in range(depth))
    s = schedule(driver.train_graph(load_source(DENSE.format(layers=layers, last=depth))))
    m = build_module(s, host_target(), threads=threads)
    return len(s.kernels), sum(1 for f in m.functions if f.blocks)


def test_repeated_layers_share_kernel_functions():
    for threads in (1, 2):
        kernels, functions = _kernels_and_functions(4, threads)
        more_kernels, same_functions = _kernels_and_functions(16, threads)
        assert more_kernels > 3 * kernels
        assert same_functions == functions


def test_the_step_is_a_list_of_calls():
    """Work after a kernel's threads are done (the blocks of a column sum or of a K split added
    up, a K-split GEMM's epilogue) runs in a function of its own, shared by twins: the step stays
    one basic block of calls, whose size LLVM's time would grow with faster than linearly (it
    did: gpt.net with 16 blocks took 64 s in LLVM when those sums were loops in the step)."""
    layers = "\n".join(f"h{i + 1} = dense(h{i}, units=80) as fc{i + 1}" for i in range(3))
    prog = load_source(DENSE.replace("f32[B, 16]", "f32[B, 96]").format(layers=layers, last=3))
    s = schedule(driver.train_graph(prog, 1024))
    for threads in (1, 2):
        m = build_module(s, host_target(), threads=threads)
        assert len(m.get_global("graphc_step").blocks) == 1
        assert any(f.name.endswith("_finish") for f in m.functions if f.blocks)  # the bias gradients' sums
