"""graphc train --init-from: a run starts from saved weights (fine-tuning); a file that does not fit the
model is one clear error, and params it lacks keep their initializer, as the output says."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.cli import main
from graphc.runtime.train.checkpoint import load_arrays, save_arrays

MODEL = "models/digits.net"  # fc1.W [64, 50], fc1.b [50], fc2.W [50, 10], fc2.b [10]


def _train(tmp_path, capsys, *extra: str) -> tuple[int, str, str]:
    rc = main(["train", MODEL, "--epochs", "1", "--no-progress", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_run_starts_from_the_saved_weights(tmp_path, capsys):
    rng = np.random.default_rng(0)
    saved = {"fc1.W": rng.normal(size=(64, 50)), "fc1.b": rng.normal(size=50),  # float64: converted
             "fc2.W": rng.normal(size=(50, 10)).astype(np.float32)}
    save_arrays(tmp_path / "start.npz", saved)
    rc, out, err = _train(tmp_path, capsys, "--init-from", str(tmp_path / "start.npz"), "--lr", "1e-12",
                          "--out", str(tmp_path / "run"))
    assert rc == 0, err
    assert (f"initialized 3 of 4 params from {tmp_path / 'start.npz'}; not in it, so drawn by their "
            f"initializers: fc2.b") in out
    params, _ = load_arrays(tmp_path / "run" / "params.npz")
    for k, v in saved.items():  # a learning rate of 1e-12 leaves them where they started
        np.testing.assert_allclose(params[k], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["fc2.b"], np.zeros(10), atol=1e-6)  # its initializer, zeros()


@pytest.mark.parametrize("arrays, message", [
    ({"fc1.W": np.zeros((50, 64))}, "param fc1.W has shape [50, 64], model wants f32[64,50]"),
    ({"fc1.W": np.zeros((64, 50), np.int32)}, "param fc1.W has dtype int32 (not floats)"),
    ({"conv1.W": np.zeros((6, 1, 5, 5))}, "holds conv1.W, which is no param of this model "
                                          "(its params: fc1.W, fc1.b, fc2.W, fc2.b)"),
    ({"fc2.b": np.full(10, np.inf)}, "param fc2.b[0]"),
])
def test_a_file_that_does_not_fit_is_refused(tmp_path, capsys, arrays, message):
    save_arrays(tmp_path / "bad.npz", arrays)
    rc, out, err = _train(tmp_path, capsys, "--init-from", str(tmp_path / "bad.npz"))
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "epoch 1" not in out


def test_init_from_and_resume_exclude_each_other(tmp_path, capsys):
    save_arrays(tmp_path / "p.npz", {"fc2.b": np.zeros(10)})
    rc, _, err = _train(tmp_path, capsys, "--init-from", str(tmp_path / "p.npz"), "--resume", str(tmp_path))
    assert rc == 2 and "--init-from starts a new run from saved weights; --resume continues" in err
