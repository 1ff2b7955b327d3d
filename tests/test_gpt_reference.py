"""One full training step of a small GPT (the architecture of models/gpt.net, written out here with
primitive ops) against a NumPy float64 reference written by hand in this file: the loss, every
param's gradient, and the params after a step of SGD and after two steps of AdamW.

The reference is independent of graphc: its forward pass is plain NumPy, its backward pass is
derived by hand (no autodiff, nothing from graphc.ops), and the optimizer follows PyTorch's
documented algorithms (torch.optim.SGD, torch.optim.AdamW). The backward pass is itself checked
against central finite differences, so a disagreement with graphc points at graphc.

Sizes are small and all different, so a transposed or mixed-up axis cannot go unnoticed: vocab 11,
width 12, 2 heads of 6, T = 5, MLP hidden 20, 2 blocks, batch 3. The params are drawn by the
model's own (seeded) init, with larger scales than gpt.net's (and non-trivial layer-norm gains and
biases) so that every path carries a gradient of a comparable size.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphc.api import Model
from graphc.frontend import load_source

V, D, H, T, F, B = 11, 12, 2, 5, 20, 3  # vocab, width, heads, sequence, MLP hidden, batch
HD = D // H
BLOCKS = ("b1", "b2")
SCALE = 0.40824829046  # 1 / sqrt(6), the literal the model uses
LN_EPS = 0.00001
GELU_A, GELU_B = 0.7978845608, 0.044715  # sqrt(2 / pi), and the cubic term's weight
MASKED = -1e9

MODEL = """
net gpt_small
dim B
input idx : i32[B, 5] nograd
input tgt : i32[B, 5] nograd

param wte : f32[11, 12] = normal(std=0.5)
param wpe : f32[5, 12] = normal(std=0.5)

layer ln(x: f32[B, T, D]) -> f32[B, T, D] {
  param g : f32[D] = normal(mean=1, std=0.3)
  param b : f32[D] = normal(std=0.3)
  m = mean(x, axes=-1, keepdims=true)
  c = x - m
  v = mean(c * c, axes=-1, keepdims=true)
  return c / sqrt(v + 0.00001) * g + b
}

layer linear(x: f32[B, T, D], units: int) -> f32[B, T, units] {
  param W : f32[D, units] = normal(std=0.4)
  param b : f32[units] = normal(std=0.2)
  return x @ W + b
}

layer attn(x: f32[B, T, D], heads: int) -> f32[B, T, D] {
  q = transpose(reshape(linear(x, units=D) as q, shape=[B, T, heads, -1]), perm=[0, 2, 1, 3])
  k = transpose(reshape(linear(x, units=D) as k, shape=[B, T, heads, -1]), perm=[0, 2, 1, 3])
  v = transpose(reshape(linear(x, units=D) as v, shape=[B, T, heads, -1]), perm=[0, 2, 1, 3])
  s = matmul(q, k, tb=true) * 0.40824829046
  future = gt(iota(s, axis=3), iota(s, axis=2))
  p = softmax(where(future, -1e9, s), axis=-1)
  o = reshape(transpose(p @ v, perm=[0, 2, 1, 3]), shape=[B, T, D])
  return linear(o, units=D) as proj
}

layer gelu_tanh(x: f32[B, T, D]) -> f32[B, T, D] {
  return 0.5 * x * (1 + tanh(0.7978845608 * (x + 0.044715 * x * x * x)))
}

layer block(x: f32[B, T, D]) -> f32[B, T, D] {
  h = x + attn(ln(x) as ln1, heads=2) as attn
  return h + linear(gelu_tanh(linear(ln(h) as ln2, units=20) as fc), units=D) as proj
}

h0 = gather(wte, idx) + wpe
h1 = block(h0) as b1
h2 = block(h1) as b2
hf = ln(h2) as lnf
logits = matmul(hf, wte, tb=true)
loss = softmax_cross_entropy(logits, tgt)

train { optimizer = %s batch = 3 epochs = 1 seed = 0 }
"""

SGD_LR = 0.1
ADAMW_LR, ADAMW_WD, BETA1, BETA2, ADAM_EPS = 0.01, 0.1, 0.9, 0.999, 1e-8

# Tolerances. graphc computes in f32 (unit roundoff 6e-8); through this depth (2 blocks, softmaxes,
# layer norms dividing by a standard deviation) forward and backward lose a few digits, so a
# gradient entry is allowed rtol 2e-4 of itself plus 1e-5 of the largest entry of its array (the
# gradient's scale: an entry near zero is a difference of f32 terms of that scale, so its absolute
# error follows the scale, not the entry). The loss, one reduction of O(1) terms, gets rtol 1e-5.
# Observed when written: every gradient within 1.4e-6 of its scale (at most 9% of its tolerance),
# the loss within 4e-8, SGD's params within 1.1e-7, AdamW's within 3.2e-7 (30% of theirs).
GRAD_RTOL, GRAD_ATOL_OF_SCALE = 2e-4, 1e-5
LOSS_RTOL = 1e-5
PARAM_RTOL = 1e-6  # an updated param is also rounded to f32 once: 6e-8, with a margin


def _model(optimizer: str) -> Model:
    return Model(load_source(MODEL % optimizer, "gpt_small.net"), batch=B, seed=1)


def _batch():
    rng = np.random.default_rng(7)
    idx = rng.integers(0, V, (B, T)).astype(np.int32)
    tgt = rng.integers(0, V, (B, T)).astype(np.int32)
    assert np.bincount(idx.ravel(), minlength=V).max() > 1  # a repeated token: the scatter must add
    return idx, tgt


# ---------------------------------------------------------------- the NumPy reference (float64) --

def _ln_fwd(x, g, b):
    c = x - x.mean(-1, keepdims=True)
    r = 1.0 / np.sqrt((c * c).mean(-1, keepdims=True) + LN_EPS)
    xh = c * r
    return xh * g + b, (xh, r, g)


def _ln_bwd(dy, cache):
    xh, r, g = cache
    dxh = dy * g
    # y = xh * g, xh = (x - mean) / sqrt(var + eps): the mean and the variance both depend on x
    dx = r * (dxh - dxh.mean(-1, keepdims=True) - xh * (dxh * xh).mean(-1, keepdims=True))
    return dx, (dy * xh).sum((0, 1)), dy.sum((0, 1))


def _lin_bwd(dy, x, w):
    """y = x @ w + b over [B, T, .]: (dx, dw, db)."""
    return dy @ w.T, np.einsum("bti,btj->ij", x, dy), dy.sum((0, 1))


def _split(z):  # [B, T, D] -> [B, H, T, HD]
    return z.reshape(B, T, H, HD).transpose(0, 2, 1, 3)


def _merge(z):  # [B, H, T, HD] -> [B, T, D]
    return z.transpose(0, 2, 1, 3).reshape(B, T, D)


FUTURE = np.arange(T)[None, :] > np.arange(T)[:, None]  # [query i, key j]: j > i is masked


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attn_fwd(x, p, pre):
    q, k, v = (_split(x @ p[f"{pre}.{n}.W"] + p[f"{pre}.{n}.b"]) for n in "qkv")
    s = q @ k.swapaxes(-1, -2) * SCALE
    a = _softmax(np.where(FUTURE, MASKED, s))
    o = _merge(a @ v)
    return o @ p[f"{pre}.proj.W"] + p[f"{pre}.proj.b"], (x, q, k, v, a, o)


def _attn_bwd(dy, cache, p, pre, grads, scales):
    x, q, k, v, a, o = cache
    do, grads[f"{pre}.proj.W"], grads[f"{pre}.proj.b"] = _lin_bwd(dy, o, p[f"{pre}.proj.W"])
    do = _split(do)
    da = do @ v.swapaxes(-1, -2)
    dv = a.swapaxes(-1, -2) @ do
    dz = a * (da - (da * a).sum(-1, keepdims=True))  # softmax's Jacobian
    ds = np.where(FUTURE, 0.0, dz) * SCALE            # nothing flows into the masked scores
    dq, dk = ds @ k, ds.swapaxes(-1, -2) @ q
    dx = np.zeros_like(x)
    for n, dn in zip("qkv", (dq, dk, dv)):
        dxn, grads[f"{pre}.{n}.W"], grads[f"{pre}.{n}.b"] = _lin_bwd(_merge(dn), x, p[f"{pre}.{n}.W"])
        dx += dxn
    # k's bias adds q_i . b to every score of query i alike, and softmax ignores such a shift: its
    # exact gradient is zero, and what is computed is the rounding left by sum over (b, t) of
    # d(k) rows that cancel. Its error scales with those rows, not with the (zero) result.
    scales[f"{pre}.k.b"] = np.abs(_merge(dk)).sum((0, 1)).max()
    return dx


def _gelu(x):
    t = np.tanh(GELU_A * (x + GELU_B * x ** 3))
    return 0.5 * x * (1 + t), t


def _gelu_bwd(dy, x, t):
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_A * (1 + 3 * GELU_B * x * x))


def _block_fwd(x, p, pre):
    n1, c1 = _ln_fwd(x, p[f"{pre}.ln1.g"], p[f"{pre}.ln1.b"])
    at, ca = _attn_fwd(n1, p, f"{pre}.attn")
    h = x + at
    n2, c2 = _ln_fwd(h, p[f"{pre}.ln2.g"], p[f"{pre}.ln2.b"])
    f = n2 @ p[f"{pre}.fc.W"] + p[f"{pre}.fc.b"]
    gl, t = _gelu(f)
    return h + gl @ p[f"{pre}.proj.W"] + p[f"{pre}.proj.b"], (c1, ca, c2, n2, f, t, gl)


def _block_bwd(dy, cache, p, pre, grads, scales):
    c1, ca, c2, n2, f, t, gl = cache
    dgl, grads[f"{pre}.proj.W"], grads[f"{pre}.proj.b"] = _lin_bwd(dy, gl, p[f"{pre}.proj.W"])
    dn2, grads[f"{pre}.fc.W"], grads[f"{pre}.fc.b"] = _lin_bwd(_gelu_bwd(dgl, f, t), n2, p[f"{pre}.fc.W"])
    dh2, grads[f"{pre}.ln2.g"], grads[f"{pre}.ln2.b"] = _ln_bwd(dn2, c2)
    dh = dy + dh2                                   # the residual, and the MLP's branch
    dn1 = _attn_bwd(dh, ca, p, f"{pre}.attn", grads, scales)
    dx1, grads[f"{pre}.ln1.g"], grads[f"{pre}.ln1.b"] = _ln_bwd(dn1, c1)
    return dh + dx1                                 # the residual, and attention's branch


def ref_loss(p, idx, tgt):
    """The forward pass alone: the loss, and what the backward pass needs."""
    x = p["wte"][idx] + p["wpe"]
    caches = []
    for pre in BLOCKS:
        x, c = _block_fwd(x, p, pre)
        caches.append(c)
    hf, cf = _ln_fwd(x, p["lnf.g"], p["lnf.b"])
    logits = hf @ p["wte"].T
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    loss = -np.take_along_axis(logp, tgt[..., None], -1).mean()
    return loss, (caches, hf, cf, logp)


def ref_loss_and_grads(p, idx, tgt):
    """The loss, each param's gradient, and each gradient's scale (the size of the terms it is
    computed from: its largest entry, except where it is exactly zero by symmetry)."""
    loss, (caches, hf, cf, logp) = ref_loss(p, idx, tgt)
    grads: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, tgt[..., None], np.take_along_axis(dlogits, tgt[..., None], -1) - 1, -1)
    dlogits /= B * T                                           # the mean over B * T positions
    dhf = dlogits @ p["wte"]
    dwte = np.einsum("btv,btd->vd", dlogits, hf)               # the tied output projection's part
    dx, grads["lnf.g"], grads["lnf.b"] = _ln_bwd(dhf, cf)
    for pre, c in reversed(list(zip(BLOCKS, caches))):
        dx = _block_bwd(dx, c, p, pre, grads, scales)
    np.add.at(dwte, idx, dx)                                   # the embedding's part: a scatter-add
    grads["wte"] = dwte
    grads["wpe"] = dx.sum(0)
    for k, g in grads.items():
        scales.setdefault(k, np.abs(g).max())
    return loss, grads, scales


def ref_sgd(p, g, lr):
    """torch.optim.SGD, no momentum or weight decay: w - lr * g."""
    return {k: w - lr * g[k] for k, w in p.items()}


def ref_adamw(p, g, state, t, lr, wd, beta1=BETA1, beta2=BETA2, eps=ADAM_EPS):
    """torch.optim.AdamW (its documented algorithm): w <- w - lr*wd*w (decoupled decay), then
    m <- b1 m + (1-b1) g, v <- b2 v + (1-b2) g^2, m_hat = m/(1-b1^t), v_hat = v/(1-b2^t),
    w <- w - lr * m_hat / (sqrt(v_hat) + eps). Returns the new params and each v_hat."""
    out, v_hats = {}, {}
    for k, w in p.items():
        m, v = state.get(k, (0.0, 0.0))
        m = beta1 * m + (1 - beta1) * g[k]
        v = beta2 * v + (1 - beta2) * g[k] ** 2
        state[k] = (m, v)
        m_hat, v_hats[k] = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        out[k] = w - lr * wd * w - lr * m_hat / (np.sqrt(v_hats[k]) + eps)
    return out, v_hats


# ---------------------------------------------------------------------------------- comparisons --

def _grad_tol(ref: np.ndarray, scale: float) -> np.ndarray:
    """The allowed error of each entry of a gradient computed in f32 (see the tolerances above)."""
    return GRAD_ATOL_OF_SCALE * scale + GRAD_RTOL * np.abs(ref)


def _check_grads(got: dict, ref: dict, scales: dict) -> float:
    """Every gradient within tolerance; returns the worst error as a fraction of its tolerance."""
    assert sorted(got) == sorted(ref), "graphc's gradients are not one per param"
    worst, report = 0.0, []
    for k, r in ref.items():
        err = np.abs(got[k].astype(np.float64) - r)
        ratio = err / _grad_tol(r, scales[k])
        worst = max(worst, ratio.max())
        if ratio.max() > 1:
            i = np.unravel_index(np.argmax(ratio), r.shape)
            report.append(f"d.{k}{list(i)}: graphc {got[k][i]:.8g}, reference {r[i]:.8g} "
                          f"(max abs error {err.max():.3g}, scale {scales[k]:.3g})")
    assert not report, "gradients differ from the reference:\n" + "\n".join(report)
    return worst


def _check_params(got: dict, ref: dict, tol: dict) -> float:
    worst, report = 0.0, []
    for k, r in ref.items():
        err = np.abs(got[k].astype(np.float64) - r)
        ratio = (err / tol[k]).max()
        worst = max(worst, ratio)
        if ratio > 1:
            i = np.unravel_index(np.argmax(err / tol[k]), r.shape)
            report.append(f"{k}{list(i)}: graphc {got[k][i]:.8g}, reference {r[i]:.8g} "
                          f"(error {err[i]:.3g}, allowed {tol[k][i]:.3g})")
    assert not report, "updated params differ from the reference:\n" + "\n".join(report)
    return worst


def _f64(params: dict) -> dict:
    return {k: v.astype(np.float64) for k, v in params.items()}


@pytest.fixture(scope="module")
def sgd_model():
    return _model(f"sgd(lr={SGD_LR})")


# ------------------------------------------------------------------------------------- the tests --

def test_reference_backward_matches_finite_differences(sgd_model):
    """The hand-written backward pass against central differences of the reference's own loss
    (float64, h = 1e-5: truncation ~h^2, roundoff ~1e-16/h, both far below 1e-7)."""
    p, (idx, tgt) = _f64(sgd_model.params), _batch()
    _, grads, scales = ref_loss_and_grads(p, idx, tgt)
    absent = sorted(set(range(V)) - set(idx.ravel()))
    entries = [("wte", (int(idx[0, 0]), 3)),     # a token of the batch: embedding and output parts
               ("wte", (absent[0] if absent else 0, 7)),  # a token not in the batch: output part alone
               ("wpe", (2, 5)), ("wpe", (0, 11)),
               ("b1.ln1.g", (4,)), ("b1.ln1.b", (9,)), ("b1.attn.q.W", (3, 7)), ("b1.attn.q.b", (5,)),
               ("b1.attn.k.W", (10, 1)), ("b1.attn.k.b", (1,)), ("b1.attn.v.W", (0, 8)),
               ("b1.attn.v.b", (6,)), ("b1.attn.proj.W", (6, 2)), ("b1.fc.W", (2, 3)),
               ("b2.ln2.g", (0,)), ("b2.ln2.b", (7,)), ("b2.attn.q.W", (11, 0)), ("b2.fc.W", (5, 19)),
               ("b2.fc.b", (13,)), ("b2.proj.W", (17, 4)), ("b2.proj.b", (11,)), ("lnf.g", (6,)),
               ("lnf.b", (2,))]
    h = 1e-5
    for name, i in entries:
        q = {k: v.copy() for k, v in p.items()}
        q[name][i] += h
        up = ref_loss(q, idx, tgt)[0]
        q[name][i] -= 2 * h
        down = ref_loss(q, idx, tgt)[0]
        fd = (up - down) / (2 * h)
        assert abs(fd - grads[name][i]) <= 1e-7 * max(1.0, abs(fd)), (name, i, fd, grads[name][i])
    for pre in BLOCKS:  # zero by symmetry: the reference's is zero to f64 rounding
        assert np.abs(grads[f"{pre}.attn.k.b"]).max() <= 1e-12 * scales[f"{pre}.attn.k.b"]


def test_loss_and_every_gradient_match_the_reference(sgd_model):
    idx, tgt = _batch()
    before = {k: v.copy() for k, v in sgd_model.params.items()}
    loss, grads, scales = ref_loss_and_grads(_f64(sgd_model.params), idx, tgt)
    out = sgd_model.grad(idx=idx, tgt=tgt)
    assert out["loss"] == pytest.approx(loss, rel=LOSS_RTOL)
    _check_grads({k[2:]: v for k, v in out.items() if k.startswith("d.")}, grads, scales)
    for k, v in before.items():  # grad updates nothing
        np.testing.assert_array_equal(sgd_model.params[k], v)


@pytest.mark.slow  # compiles a training step (~5 s)
def test_sgd_step_matches_the_reference(sgd_model):
    idx, tgt = _batch()
    p0 = _f64(sgd_model.params)
    loss, grads, scales = ref_loss_and_grads(p0, idx, tgt)
    out = sgd_model.step(idx=idx, tgt=tgt)
    assert out["loss"] == pytest.approx(loss, rel=LOSS_RTOL)  # the loss before the update
    # w - lr * g: the gradient's error scaled by lr, and the new value's rounding to f32
    tol = {k: PARAM_RTOL * np.abs(w) + SGD_LR * _grad_tol(grads[k], scales[k]) for k, w in p0.items()}
    _check_params(sgd_model.params, ref_sgd(p0, grads, SGD_LR), tol)


@pytest.mark.slow  # compiles a training step (~5 s)
def test_two_adamw_steps_match_the_reference():
    """Two steps, so that the moments and the bias corrections (1 - beta^t, kept as state) carry
    from one step to the next; the decoupled weight decay applies to every param (PyTorch's
    default single param group)."""
    m = _model(f"adamw(lr={ADAMW_LR}, weight_decay={ADAMW_WD})")
    idx, tgt = _batch()
    rng = np.random.default_rng(3)
    batches = [(idx, tgt), (rng.integers(0, V, (B, T)).astype(np.int32), tgt[::-1].copy())]
    p, state = _f64(m.params), {}
    for t, (ib, tb) in enumerate(batches, start=1):
        loss, grads, scales = ref_loss_and_grads(p, ib, tb)
        out = m.step(idx=ib, tgt=tb)
        assert out["loss"] == pytest.approx(loss, rel=LOSS_RTOL)
        new, v_hat = ref_adamw(p, grads, state, t, ADAMW_LR, ADAMW_WD)
        tol = {k: PARAM_RTOL * np.abs(w) + _adamw_tol(grads[k], scales[k], v_hat[k]) for k, w in p.items()}
        _check_params(m.params, new, tol)
        p = _f64(m.params)  # the next step from graphc's params (equal to the reference's within f32)


def _adamw_tol(g: np.ndarray, scale: float, v_hat: np.ndarray) -> np.ndarray:
    """The update lr * m_hat / (sqrt(v_hat) + eps) moves by about lr * dg / sqrt(v_hat) for a
    gradient error dg (m_hat and sqrt(v_hat) are bias-corrected averages of the same gradients;
    in the first two steps |m_hat| <= 1.002 sqrt(v_hat)): allowed 4x that, dg the gradient's
    tolerance. The update's size is at most 1.002 lr, so no two can differ by more than 2.004 lr:
    where the gradient is rounding noise (k's bias, zero by symmetry) that is all there is to
    check, in PyTorch as here: eps = 1e-8 is the size of f32 noise, and the step follows its sign."""
    return np.minimum(4 * ADAMW_LR * _grad_tol(g, scale) / (np.sqrt(v_hat) + ADAM_EPS), 2.01 * ADAMW_LR)


# the same model with the built-in layer_norm and gelu, as models/gpt.net writes it
BUILTIN = (MODEL.replace("ln(x) as ln1", "layer_norm(x) as ln1").replace("ln(h) as ln2", "layer_norm(h) as ln2")
           .replace("ln(h2) as lnf", "layer_norm(h2) as lnf").replace("gelu_tanh(linear", "gelu(linear")
           .replace("units=20) as fc)", "units=20) as fc, tanh=true)"))


@pytest.mark.slow
@pytest.mark.parametrize("source", [MODEL, BUILTIN], ids=["primitives", "built-ins"])
def test_graphc_check_passes_in_float64(source):
    """`graphc check`'s engine: backprop of the whole small GPT against float64 central differences."""
    from graphc import driver
    from graphc.ir.init import init_params
    from graphc.runtime.train.gradcheck import check_graph

    prog = load_source(source % "adamw(lr=0.01)", "gpt_small.net")
    fwd = driver.forward(prog, B, "f64")
    params = {k: v.astype(np.float64) for k, v in init_params(fwd.params, 2).items()}
    idx, tgt = _batch()
    report = check_graph(fwd, params, {"idx": idx, "tgt": tgt})
    assert report["ok"], [r for r in report["params"] if r["max_rel_error"] > 1e-4]
    assert len(report["params"]) == len(fwd.params)


def test_built_ins_compute_what_the_primitives_do():
    """The built-in layer_norm and gelu(tanh=true) give the primitives' loss and gradients."""
    idx, tgt = _batch()
    prim, built = _model("sgd(lr=0.1)"), Model(load_source(BUILTIN % "sgd(lr=0.1)", "gpt_small.net"), batch=B, seed=1)
    def rename(k: str) -> str:  # the layer's g and b are the built-in's gamma and beta
        return k.replace(".g", ".gamma").replace(".b", ".beta") if ".ln" in k or k.startswith("lnf") else k

    for k, v in prim.params.items():
        built.params[rename(k)][...] = v
    a, b = prim.grad(idx=idx, tgt=tgt), built.grad(idx=idx, tgt=tgt)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for k in a:
        if k.startswith("d."):
            np.testing.assert_allclose(b[f"d.{rename(k[2:])}"], a[k], rtol=2e-4, atol=1e-5, err_msg=k)
