"""bench/run.py in smoke mode, as CI runs it: every framework either gets a row or says why not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("pytorch", "torch.compile", "jax")  # optional: run when installed, else skipped with a reason


def test_smoke_run_prints_a_table_with_graphc_and_numpy_and_reasons_for_skips():
    p = subprocess.run([sys.executable, "bench/run.py", "--smoke"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    rows = {}  # (network, framework) -> s/epoch
    for m in re.finditer(r"^(\S+\.net b\d+)\s+(\S+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s", out, re.M):
        rows[m[1], m[2]] = float(m[3])
    for net in ("mlp.net b128", "twolayer.net b100", "mlp.net b8"):
        for fw in ("graphc", "numpy"):
            assert rows.get((net, fw), 0) > 0, f"no positive s/epoch for {fw} on {net}:\n{out}"
    for fw in PEERS:
        ran = any(f == fw for _, f in rows)
        reason = re.search(rf"^skipped {re.escape(fw)}: \S.*$", out, re.M)
        assert ran or reason, f"{fw} neither ran nor said why it was skipped:\n{out}"
    assert re.search(r"FP32 FMA peak \(generated kernel\): 1 thread \d+\.\d GFLOP/s", out), out
    assert re.search(r"^CPU: \S", out, re.M), out
    assert re.search(r"^  graphc +\d+\.\d µs", out, re.M), out  # the batch-8 latency
