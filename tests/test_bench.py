"""bench/: run.py in smoke mode, as CI runs it (every framework either gets a row or says why not),
seq.py (the sequence models) in smoke mode, dist.py (data-parallel over MPI, and the cost model) in
smoke mode, and netspec.py, which reads a model as the layers the peer frameworks build."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from graphc.driver import forward, load

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("pytorch", "torch.compile", "jax")  # optional: run when installed, else skipped with a reason
MLPS = ("mlp.net b128", "twolayer.net b100", "mlp.net b8", "mlp_wide.net b256")
CONVS = ("lenet.net b64", "cnn_wide.net b128")  # NumPy's baseline is an MLP: it skips these
# a network's line in the per-kernel report: step time, then GEMMs' and loop kernels' shares and rates
KERNEL_SUMMARY = (r"^{}: \d+\.\d+ ms/step \(\d+ steps\); GEMMs (\d+\.\d)% of it at (\d+\.\d)% of peak; "
                  r"memory-bound (\d+\.\d)% at (\d+\.\d)% of bandwidth")
sys.path.insert(0, str(ROOT / "bench"))  # bench/ is a folder of scripts, not a package
import netspec  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it


def test_smoke_run_prints_a_table_with_graphc_and_numpy_and_reasons_for_skips():
    p = subprocess.run([sys.executable, "bench/run.py", "--smoke"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    rows, losses = {}, {}  # (network, framework) -> s/epoch, and -> mean loss of the timed epoch
    for m in re.finditer(r"^(\S+\.net b\d+)\s+(\S+)\s+(\d+\.\d+)\s+\d+\.\d+\s+\S+\s+\S+%\s+(\S+)", out, re.M):
        rows[m[1], m[2]], losses[m[1], m[2]] = float(m[3]), float(m[4])
    for net in MLPS + CONVS:
        assert rows.get((net, "graphc"), 0) > 0, f"no positive s/epoch for graphc on {net}:\n{out}"
        summary = re.search(KERNEL_SUMMARY.format(re.escape(net)), out, re.M)
        assert summary, f"no per-kernel summary for {net}:\n{out}"
        gemm_share, gemm_peak, loop_share, loop_bw = (float(x) for x in summary.groups())
        assert gemm_share > 0 and gemm_peak > 0 and loop_share > 0 and loop_bw > 0, summary[0]
        assert gemm_share + loop_share <= 100.1, summary[0]
    for net in MLPS:
        assert rows.get((net, "numpy"), 0) > 0, f"no positive s/epoch for numpy on {net}:\n{out}"
    for net in CONVS:
        assert re.search(rf"^skipped numpy on {re.escape(net)}: \S", out, re.M), out
    # same initial weights, batches and optimizer: every framework ends the epoch at graphc's loss
    # (within 0.01: on tied maxima graphc's max_pool2d gradient differs from PyTorch's and JAX's)
    for (net, fw), loss in losses.items():
        assert abs(loss - losses[net, "graphc"]) < 0.01, f"{fw} on {net}: loss {loss}:\n{out}"
    for fw in PEERS:
        ran = any(f == fw for _, f in rows)
        reason = re.search(rf"^skipped {re.escape(fw)}: \S.*$", out, re.M)
        assert ran or reason, f"{fw} neither ran nor said why it was skipped:\n{out}"
    assert re.search(r"FP32 FMA peak \(generated kernel\): 1 thread \d+\.\d GFLOP/s", out), out
    assert re.search(r"^memory bandwidth \(generated triad .*\): 1 thread \d+\.\d GB/s", out, re.M), out
    assert re.search(r"^CPU: \S", out, re.M), out
    assert re.search(r"^  graphc +\d+\.\d µs", out, re.M), out  # the batch-8 latency


SEQ_ROW = re.compile(r"^(\S+\.net b\d+)\s+(\S+)\s+(\d+\.\d+)\s+\S+\s+\S+\s+(\d+\.\d+)\s+(\d+\.\d+)%"
                     r"\s+(\d+\.\d+)\s+(\d+\.\d+)", re.M)


def _seq_smoke(*frameworks: str) -> tuple[str, dict[tuple[str, str], tuple[float, ...]]]:
    """bench/seq.py --smoke with `frameworks`: its output, and (model, framework) -> (ms/step,
    GFLOP/s, % peak, first step's loss, timed steps' loss)."""
    p = subprocess.run([sys.executable, "bench/seq.py", "--smoke", "--frameworks", ",".join(frameworks)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {(m[1], m[2]): tuple(float(m[i]) for i in range(3, 8)) for m in SEQ_ROW.finditer(p.stdout)}
    return p.stdout, rows


def test_seq_smoke_prints_a_table_for_gpt_and_lstm_with_graphc():
    out, rows = _seq_smoke("graphc")
    for net, gflop in (("gpt.net b32", "10.87"), ("lstm.net b32", "4.83")):
        assert (net, "graphc") in rows, f"no graphc row for {net}:\n{out}"
        ms, gflops, peak, first, loss = rows[net, "graphc"]
        assert ms > 0 and gflops > 0 and peak > 0, out
        assert abs(first - math.log(256)) < 0.05, f"{net}: first loss {first}, not ~ln 256:\n{out}"
        assert loss < first, f"{net}: the loss did not fall:\n{out}"
        assert re.search(rf"^{re.escape(net)}: .*, {gflop} GFLOP/step", out, re.M), out
    assert [fw for _, fw in rows] == ["graphc", "graphc"], out  # graphc alone: no peer ran
    assert re.search(r"FP32 FMA peak \(generated kernel\): 1 thread \d+\.\d GFLOP/s", out), out
    assert re.search(r"^CPU: \S", out, re.M), out


def test_seq_pytorch_twins_start_from_graphcs_weights_and_train_alike():
    pytest.importorskip("torch")
    out, rows = _seq_smoke("graphc", "pytorch")
    for net in ("gpt.net b32", "lstm.net b32"):
        g, t = rows[net, "graphc"], rows[net, "pytorch"]
        assert abs(g[3] - t[3]) < 1e-4, f"{net}: first-step losses differ:\n{out}"  # same weights, batch
        assert abs(g[4] - t[4]) < 1e-3, f"{net}: losses differ after 3 steps:\n{out}"


def test_netspec_reads_lenet_as_conv_and_dense_layers_with_their_flops():
    spec = netspec.read_spec(forward(load(ROOT / "models/lenet.net"), 3))
    assert spec.input_shape == (1, 28, 28)
    assert [(layer.kind, layer.W, layer.b, layer.act, layer.pool, layer.padding) for layer in spec.layers] == [
        ("conv", "conv1.W", "conv1.b", "relu", (2, 2), (2, 2)),
        ("conv", "conv2.W", "conv2.b", "relu", (2, 2), (0, 0)),
        ("dense", "fc1.W", "fc1.b", "relu", None, (0, 0)),
        ("dense", "fc2.W", "fc2.b", "relu", None, (0, 0)),
        ("dense", "out.W", "out.b", None, None, (0, 0))]
    assert spec.layers[1].out_shape == (16, 10, 10) and not spec.is_mlp
    macs = [6 * 28 * 28 * 25, 16 * 10 * 10 * 6 * 25, 400 * 120, 120 * 84, 84 * 10]
    assert [layer.macs for layer in spec.layers] == macs
    assert spec.flops_per_sample() == 2 * (3 * sum(macs) - macs[0])  # no gradient of the data


def test_netspec_names_the_model_line_it_cannot_express(tmp_path):
    model = tmp_path / "tanhnet.net"
    model.write_text("net tanhnet\ndim B\ninput x : f32[B, 12]\ninput y : i32[B]\n"
                     "param W : f32[12, 5] = zeros()\nparam b : f32[5] = zeros()\n"
                     "loss = softmax_cross_entropy(tanh(x @ W + b), y)\n")
    with pytest.raises(SystemExit, match=r"tanhnet\.net:7: tanh: .*dense and stride-1 conv layers"):
        netspec.read_spec(forward(load(model), 4))


# network, configuration, s per round, s per MNIST epoch, speed vs 1 process, loss; for ranks: bytes,
# us per step in the allreduce, its % of the step, us alone, GB/s alone
DIST_ROW = re.compile(r"^(\S+\.net b\d+)\s+(\d+ ranks x 1 thread|1 process x \d+ threads?)"
                      r"\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)"
                      r"(?:\s+(\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)%\s+(\d+\.\d+)\s+(\d+\.\d+))?$", re.M)
COST_ROW = re.compile(r"^(\S+\.net)\s+(\d+)((?:\s+\d+\.\d+)+)\s+(\d+)$", re.M)
# the data-parallel step's packed buffer: every param's gradient, the loss, the accuracy and the
# stop vote, 4 bytes each
PACKED = {"mlp.net b128": 4 * (269322 + 3), "lenet.net b64": 4 * (61706 + 3)}
SCALING_ROW = re.compile(r"^(\S+\.net)((?:\s+\d+\.\d+%\s+\d+\.\d+ms){6})$", re.M)


def test_dist_smoke_prints_ranks_against_threads_and_the_cost_model():
    p = subprocess.run([sys.executable, "bench/dist.py", "--smoke"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert re.search(r"^CPU: \S", out, re.M), out
    rows = {(m[1], m[2]): m for m in DIST_ROW.finditer(out)}
    for net in ("mlp.net b128", "lenet.net b64"):
        single = rows.get((net, "1 process x 1 thread"))
        assert single and float(single[3]) > 0 and float(single[4]) > 0, f"no 1-process row for {net}:\n{out}"
        ranked = rows.get((net, "2 ranks x 1 thread"))
        if ranked is None:  # MPI missing, or its job ended twice unexplained: the row says why
            assert re.search(rf"^skipped {re.escape(net)} 2 ranks x 1 thread: \S", out, re.M), out
            continue
        s, epoch, _, loss, nbytes, us, share, alone, gbs = (float(x) for x in ranked.groups()[2:])
        assert min(s, epoch, nbytes, us, share, alone, gbs) > 0, f"{net}: {ranked[0]}\n{out}"
        assert nbytes == PACKED[net], f"{net}: {nbytes} bytes per step:\n{out}"
        # the same weights and batches: the global loss is one process's, up to summation order
        assert abs(loss - float(single[6])) < 1e-3, f"{net}: 2 ranks' loss {loss} vs {single[6]}:\n{out}"
    costs = {m[1]: m for m in COST_ROW.finditer(out)}
    assert set(costs) == {"mlp.net", "lenet.net"}, out
    for m in costs.values():
        assert all(float(x) > 0 for x in m[3].split()), f"{m[0]}\n{out}"
        assert int(m[4]) == PACKED[f"{m[1]} b{m[2]}"], f"{m[0]}\n{out}"
    scaling = {m[1]: [float(x) for x in re.findall(r"(\d+\.\d+)%", m[2])] for m in SCALING_ROW.finditer(out)}
    assert set(scaling) == {"mlp.net", "lenet.net"}, out
    for eff in scaling.values():  # 10 then 100 Gb/s, at 2, 8, 64 nodes: falls with N, rises with bandwidth
        assert all(0 < e <= 100 for e in eff) and eff[0] >= eff[1] >= eff[2] and eff[3] >= eff[0], out
