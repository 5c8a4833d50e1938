"""Data-parallel training (torch.distributed, gloo on the CPU) against single-process training, on
the semi-synthetic files of tests/ml_semisynth.py. Real processes, real process groups, no mocks."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from xpmet.errors import XpmetError
from xpmet.ml import dataset as ds
from xpmet.ml import distributed as dist
from xpmet.ml.evaluate import metrics_for
from xpmet.ml.inference import load_predictor
from xpmet.ml.train import TrainConfig, train

import ml_semisynth as semi

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Full-batch gradient descent without augmentation: every step sees all training rows in one
# process or split over two, so the two runs must agree to float rounding.
FULL = TrainConfig(kind="estimator", hidden=(16,), epochs=6, batch_size=600, max_train=600, augment=0.0,
                   patience=50, lr=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    semi.write_file(d / "data.h5", n=1600, n_faint=10)
    return d


@pytest.fixture(scope="module")
def full_batch(data):
    one = train(data / "data.h5", data / "full1", FULL, register=False, progress=False)
    two = train(data / "data.h5", data / "full2", FULL, register=False, progress=False, nproc=2, threads=1)
    return one, two


def _weights(model_dir):
    return torch.load(model_dir / "weights.pt", weights_only=True)["members"]


def test_shards_cover_every_row_once_and_ranks_read_only_theirs(data):
    for n, world in ((10, 3), (1259, 2), (7, 4), (8, 2)):
        parts = [dist.shard(n, r, world) for r in range(world)]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-n // world)  # same steps
        assert np.array_equal(np.sort(np.concatenate([np.unique(p) for p in parts])), np.arange(n))
    rows = ds.split_rows(data / "data.h5", "train")
    full = ds.read(data / "data.h5", "train")
    assert np.array_equal(ds.read(data / "data.h5", rows=rows).source_id, full.source_id)
    mine = rows[dist.shard(len(rows), 1, 2)]
    part = ds.read(data / "data.h5", rows=mine)
    assert np.array_equal(part.source_id, full.source_id[dist.shard(len(rows), 1, 2)])
    assert np.array_equal(part.x, full.x[dist.shard(len(rows), 1, 2)], equal_nan=True)


def test_full_batch_two_processes_equal_one(full_batch):
    one, two = full_batch
    c1, c2 = (json.loads((p / "config.json").read_text()) for p in (one, two))
    assert (c1["world_size"], c2["world_size"], c2["backend"], c2["batch_per_rank"]) == (1, 2, "gloo", 300)
    assert c1["n_train"] == c2["n_train"] == 600
    # the uncertainty calibration: the same degraded copies, counts summed over the ranks -> the same k
    np.testing.assert_allclose(c2["sigma_scale"], c1["sigma_scale"], rtol=1e-4)
    # same normaliser: fitted once on the whole training split
    assert (one / "normalisation.json").read_text() == (two / "normalisation.json").read_text()
    h1, h2 = (json.loads((p / "history.json").read_text())[0] for p in (one, two))
    assert h1["epochs"] == h2["epochs"] == FULL.epochs
    # losses summed over the ranks' shards = the single-process losses (float rounding only)
    np.testing.assert_allclose(h2["train"], h1["train"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h2["valid"], h1["valid"], rtol=1e-4, atol=1e-5)
    w1, w2 = _weights(one)[0], _weights(two)[0]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    assert not (two / "checkpoint.pt").exists()


def _stop_at_epoch_2(member, epoch, *_):
    if epoch == 2:
        raise RuntimeError("stopped on purpose")


def test_resume_continues_a_two_process_run_exactly(data, full_batch):
    _, two = full_batch
    out = data / "resumed"
    with pytest.raises(XpmetError, match="stopped on purpose"):
        train(data / "data.h5", out, FULL, register=False, progress=False, nproc=2, threads=1,
              on_epoch=_stop_at_epoch_2)
    assert (out / "checkpoint.pt").exists() and not (out / "weights.pt").exists()
    with pytest.raises(XpmetError, match="same --nproc"):
        train(data / "data.h5", out, FULL, resume=True, register=False, progress=False)
    train(data / "data.h5", out, FULL, resume=True, register=False, progress=False, nproc=2, threads=1)
    for k, v in _weights(two)[0].items():
        assert torch.equal(_weights(out)[0][k], v), k


def _fail_on_rank_1(member, epoch, *_):
    if epoch == 1 and os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 broke")


def test_an_error_on_one_rank_stops_every_rank_with_one_line(data):
    t0 = time.time()
    with pytest.raises(XpmetError) as e:  # rank 0 is waiting in a collective when rank 1 fails
        train(data / "data.h5", data / "broken", FULL, register=False, progress=False, nproc=2, threads=1,
              on_epoch=_fail_on_rank_1)
    assert str(e.value) == "training process 1 failed: RuntimeError: rank 1 broke"
    assert time.time() - t0 < 120 and multiprocessing.active_children() == []
    assert not (data / "broken" / "weights.pt").exists()
    # (an error in rank 0's checks, broadcast to every rank: the torchrun test below)
    odd = TrainConfig(**{**FULL.__dict__, "batch_size": 99})
    with pytest.raises(XpmetError, match="make it a multiple of 2"):
        train(data / "data.h5", data / "odd", odd, register=False, progress=False, nproc=2, threads=1)
    assert multiprocessing.active_children() == []


def _stall_on_rank_1(member, epoch, *_):
    if epoch == 1 and os.environ.get("RANK") == "1":
        time.sleep(600)


def test_a_stalled_or_missing_rank_times_out_instead_of_hanging(data):
    t0 = time.time()
    with pytest.raises(XpmetError, match=r"rank 0: .*[Tt]imed out.*--dist-timeout 3 s"):
        train(data / "data.h5", data / "stalled", FULL, register=False, progress=False, nproc=2, threads=1,
              on_epoch=_stall_on_rank_1, dist_timeout=3)
    assert time.time() - t0 < 120 and multiprocessing.active_children() == []
    # a job of two whose second process never starts: the rendezvous gives up
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(dist.free_port())}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "xpmet.ml.train", str(data / "data.h5"), "--out", str(data / "alone"),
                        "--no-register", "--dist-timeout", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and time.time() - t0 < 60
    assert r.stderr.strip().startswith("error: rank 0: ") and "dist-timeout 3 s" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# Mini-batch SGD with augmentation: different shuffles, so agreement is statistical. Measured on a
# file like this one, ensembles of 2 as here, seeds 0-3: validation [Fe/H] scatter 0.093-0.101 dex
# with 1 process, 0.094-0.112 with 2; test scatter 0.101-0.123 and 0.096-0.111; best validation
# loss -0.26..-0.34 for both; any two of the 8 models (1-1, 1-2 or 2-2 processes) differ by
# 0.066-0.097 dex rms on the test split. The tolerances below hold that spread with room.
MINI = ("--kind", "estimator", "--hidden", "48,48", "--epochs", "100", "--patience", "10", "--batch-size", "128",
        "--lr", "4e-3", "--seed", "0", "--threads", "1", "--ensemble", "2")


def test_cli_nproc_2_is_within_tolerance_of_one_process_and_registers_once(data, run_cli, clean_db):
    h5 = data / "data.h5"
    r1 = run_cli("train", h5, "--out", data / "m1", *MINI)
    r2 = run_cli("train", h5, "--out", data / "m2", *MINI, "--nproc", "2")
    assert r2.output.count("model in") == 1 and "validation [Fe/H] scatter" in r2.output, r1.output
    m1, m2 = (json.loads((data / m / "metrics.json").read_text()) for m in ("m1", "m2"))
    s1, s2 = m1["valid"]["overall"]["feh"]["scatter"], m2["valid"]["overall"]["feh"]["scatter"]
    assert abs(s2 - s1) < 0.3 * s1, (s1, s2)
    assert np.allclose(m2["best_valid_loss"], m1["best_valid_loss"], atol=0.15)
    test = ds.read(h5, "test")
    p1, p2 = load_predictor(data / "m1"), load_predictor(data / "m2")
    diff = p2.predict_arrays(test)["feh"] - p1.predict_arrays(test)["feh"]
    t1 = metrics_for(p1, test)["overall"]["feh"]["scatter"]
    assert np.sqrt(np.nanmean(diff ** 2)) < 1.5 * t1       # as close as two seeds are
    assert 0.7 < metrics_for(p2, test)["overall"]["feh"]["calibration"] < 1.5
    # ensemble: both members trained with DDP in turn; one directory, one registration
    assert len(json.loads((data / "m2" / "history.json").read_text())) == 2 and len(_weights(data / "m2")) == 2
    assert not (data / "m2" / "checkpoint.pt").exists()
    with clean_db.connect() as c:
        rows = c.execute(sa.text("SELECT path, config->>'world_size' FROM xpmet.models ORDER BY model_id")).all()
    assert [(os.path.basename(p), w) for p, w in rows] == [("m1", "1"), ("m2", "2")]
    assert json.loads((data / "m2" / "model.json").read_text())["model_id"]


def test_torchrun_runs_the_training_entry_point(data):
    out = data / "tr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "xpmet.ml.train", data / "data.h5", "--out", out, "--hidden", "16", "--epochs", "3",
           "--batch-size", "128", "--threads", "1", "--no-register"]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("model in") == 1, r.stdout  # rank 0 reports
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["world_size"], cfg["backend"], cfg["batch_per_rank"]) == (2, "gloo", 64)
    # the same error path: one line per failing rank, non-zero exit, nobody left waiting
    r = subprocess.run([str(c) for c in cmd[:-1]], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "already holds a trained model" in r.stderr


DRIVER = """import sys
sys.path.insert(0, {tests!r})
from test_ddp import FULL
from xpmet.ml.train import TrainConfig, train
train(sys.argv[1], sys.argv[2], TrainConfig(**{{**FULL.__dict__, "device": sys.argv[3]}}), register=False,
      progress=False)
"""


def torchrun_full_batch(data, nproc: int, device: str, tag: str):
    """FULL trained by torchrun in nproc processes on device ('cuda': nccl, one GPU each; 'cpu': gloo)."""
    script = data / "driver.py"
    script.write_text(DRIVER.format(tests=os.path.dirname(os.path.abspath(__file__))))
    out = data / tag
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(nproc), str(script), str(data / "data.h5"), str(out), device],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nccl)")
def test_nccl_on_the_gpus(data):
    """Run where there are GPUs: `.venv/bin/python -m pytest tests/test_ddp.py -k nccl`. One GPU is
    enough: a torchrun job of one process still runs the nccl process group and DDP."""
    n = min(torch.cuda.device_count(), 4)
    one = train(data / "data.h5", data / "gpu1", TrainConfig(**{**FULL.__dict__, "device": "cuda"}),
                register=False, progress=False)
    many = torchrun_full_batch(data, n, "cuda", "gpun")
    cfg = json.loads((many / "config.json").read_text())
    assert (cfg["backend"], cfg["device"], cfg["world_size"], cfg["batch_per_rank"]) == ("nccl", "cuda:0", n, 600 // n)
    h1, hn = (json.loads((p / "history.json").read_text())[0] for p in (one, many))
    # mixed precision on CUDA: rounding differs with the batch split, not the result
    np.testing.assert_allclose(hn["valid"], h1["valid"], rtol=1e-2, atol=1e-3)
    assert (one / "normalisation.json").read_text() == (many / "normalisation.json").read_text()
