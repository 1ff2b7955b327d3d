"""The initializers users expect (he_uniform, xavier_normal, orthogonal, truncated_normal): NumPy's draws
and the C library's (graphc compile) have the right statistics; a misuse is a positioned error."""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil

import numpy as np
import pytest

from graphc.artifacts import SHARED_SUFFIX, write_artifacts
from graphc.errors import GraphcError
from graphc.frontend import load_source
from graphc.ir.init import init_params

# non-square params; fans as graphc reads them: dense [in, out], conv [out, in, kh, kw]
MODEL = """net inits
dim B
input x : f32[B, 300]
input y : i32[B]
param hu : f32[300, 200] = he_uniform()
param xn : f32[300, 200] = xavier_normal()
param tn : f32[300, 200] = truncated_normal(std=0.5, mean=1)
param og : f32[300, 200] = orthogonal(gain=2)
param ow : f32[20, 3, 5, 7] = orthogonal()
loss = softmax_cross_entropy(x @ (hu + xn + tn + og) + sum(ow), y)
train { optimizer = sgd(lr=0.1)  batch = 4 }
"""
SHAPES = {"hu": (300, 200), "xn": (300, 200), "tn": (300, 200), "og": (300, 200), "ow": (20, 3, 5, 7)}


def check_statistics(w: dict[str, np.ndarray]) -> None:
    hu = np.sqrt(6 / 300)  # he_uniform: U(-limit, limit), limit = sqrt(6 / fan_in)
    assert -hu <= w["hu"].min() < -0.98 * hu and 0.98 * hu < w["hu"].max() <= hu
    assert w["hu"].std() == pytest.approx(hu / np.sqrt(3), rel=0.02)
    assert w["xn"].std() == pytest.approx(np.sqrt(2 / 500), rel=0.02) and abs(w["xn"].mean()) < 1e-3
    tn = w["tn"]  # N(1, 0.5) cut at 2 std: [0, 2], std 0.5 * 0.8796 (a normal truncated at +-2)
    assert tn.min() >= 0 and tn.max() <= 2 and tn.min() < 0.05 and tn.max() > 1.95
    assert tn.mean() == pytest.approx(1, abs=0.01) and tn.std() == pytest.approx(0.5 * 0.8796, rel=0.02)
    og = w["og"].astype(np.float64)  # 300 x 200: orthonormal columns, times the gain
    np.testing.assert_allclose(og.T @ og, 4 * np.eye(200), atol=1e-4)
    ow = w["ow"].reshape(20, 105).astype(np.float64)  # 20 x 105: orthonormal rows
    np.testing.assert_allclose(ow @ ow.T, np.eye(20), atol=1e-5)


def test_numpy_draws():
    prog = load_source(MODEL, "inits.net")
    w = init_params(prog.graph.params, seed=1)
    assert {k: v.shape for k, v in w.items()} == SHAPES
    check_statistics(w)


CC = shlex.split(os.environ.get("CC") or "cc")


@pytest.mark.skipif(shutil.which(CC[0]) is None, reason=f"no C compiler ({CC[0]}) to link with")
def test_c_library_draws(tmp_path):
    write_artifacts(load_source(MODEL, "inits.net"), tmp_path, None, 1)
    dll = ctypes.CDLL(str(tmp_path / f"libinits{SHARED_SUFFIX}"))
    dll.inits_create.restype, dll.inits_create.argtypes = ctypes.c_void_p, [ctypes.c_uint64]
    dll.inits_get_param.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    dll.inits_destroy.argtypes = [ctypes.c_void_p]
    ctx = dll.inits_create(5)
    try:
        w = {k: np.empty(shape, np.float32) for k, shape in SHAPES.items()}
        for k, a in w.items():
            assert dll.inits_get_param(ctx, k.encode(), a.ctypes.data) == 0
    finally:
        dll.inits_destroy(ctx)
    check_statistics(w)


@pytest.mark.parametrize("decl, message", [
    ("param b : f32[5] = orthogonal()", "t.net:3:20: error: orthogonal(): a param of 2 or more dims is needed, not [5]"),
    ("param b : f32[5] = truncated_normal(std=-1)", "truncated_normal(): std must not be negative, got -1"),
    ("param b : f32[5] = he_uniform(gain=2)", "he_uniform() argument 'gain' is unknown"),
])
def test_misuse_is_a_positioned_error(decl, message):
    with pytest.raises(GraphcError) as e:
        load_source(f"net t\ninput x : f32[4, 5]\n{decl}\nloss = sum(x * b)\n", "t.net")
    assert str(e.value).splitlines()[0] == message if message.startswith("t.net") else message in str(e.value)
