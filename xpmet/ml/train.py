"""Training loop shared by both model kinds: device choice, seeding, augmentation, early stopping,
checkpoints/--resume, and the model directory.

Model directory layout (what :func:`xpmet.ml.inference.load_predictor` reads)::

    config.json         kind, architecture, training options, the data file's attributes
    normalisation.json  scalers + noise model fitted on the training split only
    ood.npz             the training spectra's PCA model for the unlike_training flag (xpmet.ml.ood)
    weights.pt          state dicts (one per ensemble member) of the best validation epoch
    fingerprint.txt     sha256 of the training HDF5 file
    history.json        per-epoch train/valid loss of every member
    metrics.json        validation-split metrics of the final model
    model.json          the row of xpmet.models this directory is registered as (model_id)
    checkpoint.pt       the last epoch's full state, for --resume (deleted when training ends)
    plots/              learning_curve.png (and the evaluate plots)
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from xpmet import __version__
from xpmet.progress import progress_bar
from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.ml import checkpoint, dataset as ds, ood
from xpmet.ml import distributed as dist
from xpmet.ml.config import TrainConfig  # noqa: F401  (its home was here: xpmet.ml.train.TrainConfig)
from xpmet.ml.models import (N_X, Emulator, Estimator, emulator_nll, ensemble_mixture, estimator_inputs,
                             known_label_nll, packed_cholesky, unpack_cholesky)
from xpmet.ml.plots import learning_curves
from xpmet.ml.normalise import (G_ZERO_POINT, Normaliser, emulator_params, fit_extra, fit_normaliser,
                                network_columns)
from xpmet.xp_coefficients import N_COEF

def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XpmetError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu.")
    return torch.device(name)


def seed_everything(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _layout(v: int) -> dict:
    """Column slices of Tensors.packed for v noisy columns (coefficients + extra inputs)."""
    names = [("x", v), ("e", v), ("ka", v), ("kb", v), ("g", 1), ("missing", 2), ("y", 4),
             ("y_err", 4), ("known", 4)]
    out, i = {}, 0
    for k, w in names:
        out[k] = slice(i, i + w) if w > 1 else i
        i += w
    return out


class Tensors:
    """One split as device tensors, in the form the model kind trains on.

    Estimator rows are packed into ONE (n, width) tensor so a batch is a single gather (layout
    :func:`_layout`): the standardised noisy columns of :func:`xpmet.ml.normalise.network_columns`
    and their errors, the noise-growth terms ka, kb (a star degraded to flux F has error^2 =
    ka / F^2 + kb / F), G, the bands' standard deviations, band flags, labels, errors and the known
    mask (times the importance weights). ``chol``: per star and band the Cholesky factor of the
    published correlation matrix, its lower triangle packed in float16 (6 KB a star; None when no
    star has correlations: diagonal noise). ``fixed``: the network
    inputs used without augmentation (as observed, or degraded once for validation).
    """

    def __init__(self, arr: ds.XPArrays, norm: Normaliser, kind: str, device, correlations=False, weights=None):
        f = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device)  # noqa: E731
        self.n = len(arr)
        self.chol = self.fixed = None
        if kind == "estimator":
            x, e, ka, kb = network_columns(norm, arr)
            ok = np.isfinite(x) & (e > 0)
            ka, kb = np.where(ok, ka, 0.0), np.where(ok, kb, 0.0)  # missing: never degraded
            y = norm.labels.transform(arr.labels)
            w = np.ones(self.n) if weights is None else weights
            self.v = x.shape[1]
            self.layout = _layout(self.v)
            self.packed = f(np.concatenate([
                x, e, ka, kb, np.nan_to_num(arr.g_mag, nan=99.0)[:, None], arr.missing, np.nan_to_num(y),
                np.nan_to_num(arr.label_err / norm.labels.std), np.isfinite(y) * w[:, None]], axis=1)).contiguous()
            if arr.chol is not None:  # read as factors (ds.read(noise_factors=True))
                self.chol = torch.as_tensor(arr.chol, device=device)
            elif arr.corr is not None:
                packed, ok = packed_cholesky(arr.corr)
                self.chol = torch.as_tensor(packed, device=device) if ok.any() else None
            self.fixed = self.inputs(self.packed)
        else:
            self.p = f(norm.params.transform(emulator_params(norm, arr.labels, arr.ag)))
            self.x = f(arr.x)
            self.e = f(arr.e)
            self.corr = f(arr.corr) if correlations and arr.corr is not None else None

    def inputs(self, b, x=None, e=None):
        """Network inputs of packed rows b (with x, e in place of theirs when given)."""
        L = self.layout
        return estimator_inputs(b[:, L["x"]] if x is None else x, b[:, L["e"]] if e is None else e,
                                b[:, L["missing"]])

    def degraded(self, augment: "Augmenter", copies: int, seed: int, pos=None, total: int | None = None) -> "Tensors":
        """A fixed copy of this split with every star degraded ``copies`` times to the target magnitudes
        (one noise draw, seeded): a deterministic validation loss for the stars models are applied to.

        ``pos``, ``total``: this shard's rows in the whole split (distributed training); the draws are
        made for the whole split and the shard's taken, so the ranks' losses add up to one process's.
        """
        dev = self.packed.device
        total = self.n if total is None else total
        pos = torch.arange(self.n, device=dev) if pos is None else torch.as_tensor(pos, device=dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        u = torch.rand(copies * total, 2, generator=gen, device=dev)
        z = torch.randn(copies * total, self.v, generator=gen, device=dev)
        take = (torch.arange(copies, device=dev)[:, None] * total + pos[None, :]).reshape(-1)
        out = copy.copy(self)
        idx = torch.arange(self.n, device=dev).repeat(copies)
        out.packed = self.packed[idx]
        out.chol = None if self.chol is None else self.chol[idx]
        out.fixed = torch.cat([augment(out, torch.arange(i, min(len(idx), i + 4096), device=dev), 1.0, None,
                                       (u[take[i:i + 4096]], z[take[i:i + 4096]]))
                               for i in range(0, len(idx), 4096)])
        out.n = len(idx)
        return out


def prior_weights(g, target_g, lo: float = 3.0, hi: float = 21.0, width: float = 0.5, clip: float = 10.0):
    """Importance weights p_target(G) / p_labelled(G) per star (mean 1, clipped): the labelled stars
    then count as the magnitude distribution of the stars models are applied to."""
    g = np.asarray(g, np.float64)
    edges = np.arange(lo, hi + width, width)
    t = np.asarray(target_g, np.float64)
    if t.size < 2:
        return np.ones(len(g))
    pt = np.histogram(t, edges)[0] / t.size
    ps = np.histogram(g[np.isfinite(g)], edges)[0] / max(np.isfinite(g).sum(), 1)
    i = np.clip(np.searchsorted(edges, g) - 1, 0, len(pt) - 1)
    w = np.where(ps[i] > 0, pt[i] / np.where(ps[i] > 0, ps[i], 1), 1.0)
    w = np.clip(w / np.mean(w), 1 / clip, clip)
    return w / np.mean(w)


class Augmenter:
    """Degrades a batch's stars to fainter magnitudes drawn from the target G distribution.

    Noise is added so the degraded columns have exactly the errors the noise model predicts at the
    new magnitude (times the star's own error factor): for the coefficients correlated as the star's
    published covariance says (DR3: the published errors times the correlation matrix; diagonal
    when the file has no correlations), for parallax and colours independently (xpmet.ml.normalise).
    """

    def __init__(self, norm: Normaliser, device):
        q = np.asarray(norm.noise.target_g, np.float64)
        self.q = torch.as_tensor(q if q.size >= 2 else [], dtype=torch.float32, device=device)

    def __call__(self, t: Tensors, idx, frac, gen, draws=None):
        """Network inputs (n, width) of the rows idx of t, a share ``frac`` of them degraded.
        ``draws``: the uniform (n,2) and normal (n,V) numbers to use instead of drawing from gen."""
        L = t.layout
        b = t.packed[idx]
        g, n, dev = b[:, L["g"]], b.shape[0], b.device
        u = torch.rand(n, 2, generator=gen, device=dev) if draws is None else draws[0]
        if self.q.numel() >= 2:  # inverse-CDF sample of the target magnitudes
            pos = u[:, 1] * (self.q.numel() - 1)
            lo = pos.floor().long().clamp(max=self.q.numel() - 2)
            g_new = torch.lerp(self.q[lo], self.q[lo + 1], pos - lo)
        else:
            g_new = g + 3 * u[:, 1]
        sel = (u[:, 0] < frac) & (g_new > g)
        g_new = torch.where(sel, g_new, g)  # unselected rows keep their G
        inv_f = (10 ** (0.4 * (g_new - G_ZERO_POINT)))[:, None]
        e = b[:, L["e"]]
        e2 = torch.where(e > 0, e, torch.zeros_like(e)) ** 2
        e2_new = torch.maximum(b[:, L["ka"]] * inv_f ** 2 + b[:, L["kb"]] * inv_f, e2)
        add = torch.sqrt(e2_new - e2)
        z = torch.randn(n, t.v, generator=gen, device=dev) if draws is None else draws[1]
        zc = z[:, :N_X].reshape(n, 2, N_COEF)
        if t.chol is not None:  # only the degraded rows: gathering 2 55x55 factors per row is the cost
            rows = torch.nonzero(sel).squeeze(1)
            zc = zc.index_copy(0, rows, (unpack_cholesky(t.chol[idx[rows]]) @ zc[rows][..., None])[..., 0])
        z = torch.cat([zc.reshape(n, N_X), z[:, N_X:]], dim=1)
        x = b[:, L["x"]] + z * add
        e_new = torch.where(e2_new > e2, torch.sqrt(e2_new), e)
        return t.inputs(b, x, e_new)


def build_model(config: TrainConfig, norm: Normaliser):
    if config.kind == "estimator":
        return Estimator(config.hidden, config.dropout, n_extra=len(norm.extra.names) if norm.extra else 0)
    return Emulator(config.hidden)


class Trainer:
    """Computes the loss of one batch for either kind (shared by training, validation, benchmark)."""

    def __init__(self, config: TrainConfig, norm: Normaliser, device):
        self.config, self.norm, self.device = config, norm, device
        self.augment = Augmenter(norm, device) if config.kind == "estimator" else None
        self.x_mean = torch.as_tensor(norm.x.mean, dtype=torch.float32, device=device)
        self.x_scale = torch.as_tensor(norm.x.std, dtype=torch.float32, device=device)

    def loss(self, model, t: Tensors, idx, gen=None, train=False):
        if self.config.kind == "estimator":
            L, p = t.layout, t.packed
            inp = self.augment(t, idx, self.config.augment, gen) if train and self.config.augment > 0 else t.fixed[idx]
            mu, log_sigma = model(inp)
            # only the label columns: the augmenter gathers the rows it needs itself
            return known_label_nll(mu.float(), log_sigma.float(), p[idx, L["y"]], p[idx, L["y_err"]],
                                   p[idx, L["known"]])
        corr = None if t.corr is None else t.corr[idx]
        return emulator_nll(model, t.p[idx], t.x[idx], t.e[idx], self.x_mean, self.x_scale, corr)[0]


def _reads(config: TrainConfig) -> dict:
    """What ds.read keeps of a file's correlations: the matrices for the emulator's full-covariance
    likelihood; for the estimator's degradation (each star's own covariance) only their packed
    Cholesky factors, made block by block as the file is read. A file without them: diagonal noise."""
    degrade = config.kind == "estimator" and config.augment > 0 and config.augment_noise != "diagonal"
    return {"correlations": config.correlations, "noise_factors": degrade}


def _usable(arr: ds.XPArrays, kind: str) -> np.ndarray:
    """Rows a kind can learn from: an estimator needs one label; an emulator needs teff, logg, feh."""
    if kind == "estimator":
        return np.isfinite(arr.labels).any(1) & ~arr.missing.all(1)
    return np.isfinite(arr.labels[:, :3]).all(1) & ~arr.missing.all(1)


def load_splits(data_path, config: TrainConfig, label_override=None, with_rows: bool = False):
    """Train and validation arrays (rows the kind can use) + the normaliser fitted on train.

    ``with_rows``: also return the file row numbers of both (what the ranks of a distributed
    run read their shards from).
    """
    train = ds.read(data_path, "train", **_reads(config))
    valid = ds.read(data_path, "valid", **_reads(config))
    if label_override is not None:  # benchmark: swap in other labels (e.g. the simulator's truth)
        train, valid = label_override(train), label_override(valid)
    keep_t, keep_v = _usable(train, config.kind), _usable(valid, config.kind)
    train, valid = train.subset(keep_t), valid.subset(keep_v)
    if config.max_train:
        train = train.subset(slice(0, config.max_train))
    if len(train) < 10 or len(valid) < 2:
        raise XpmetError(f"{data_path}: only {len(train)} training and {len(valid)} validation stars usable "
                         f"for a {config.kind}; export more labelled stars.")
    noise = ds.noise_sample(data_path)
    if noise is None:
        raw_err, flux, tg = train.e * train.flux[:, None], train.flux, train.g_mag
    else:
        raw_err, flux, tg = noise
    norm = fit_normaliser(train.x, train.labels, train.ag, train.g_mag, raw_err, flux, tg)
    if config.kind == "estimator" and config.inputs == "xp+gaia":
        norm.extra = fit_extra(train, norm.noise)
    if not with_rows:
        return train, valid, norm
    rows = (ds.split_rows(data_path, "train")[keep_t][:len(train)], ds.split_rows(data_path, "valid")[keep_v])
    return train, valid, norm, rows


def _prepare(data_path, out: Path, config: TrainConfig, resume: bool, label_override, world: int):
    """Rank 0 (or the only process): directory checks, splits, normaliser, the checkpoint to resume."""
    ckpt_path = out / "checkpoint.pt"
    # a run killed while writing the directory still has its checkpoint: that says --resume, not "delete"
    if out.exists() and (out / "weights.pt").exists() and not ckpt_path.exists() and not resume:
        raise XpmetError(f"{out} already holds a trained model; choose another --out or delete it.")
    if ckpt_path.exists() and not resume:
        raise XpmetError(f"{out} holds an interrupted run (checkpoint.pt): add --resume to continue it, "
                         "or delete the directory to start again.")
    if resume and not ckpt_path.exists():
        raise XpmetError(f"{out}: no checkpoint.pt to resume from; train without --resume.")
    if config.batch_size % world:
        raise XpmetError(f"--batch-size {config.batch_size} is the total over {world} processes: "
                         f"make it a multiple of {world}.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    train_arr, valid_arr, norm, rows = load_splits(data_path, config, label_override, with_rows=True)
    if world > min(len(train_arr), len(valid_arr)):
        raise XpmetError(f"{len(train_arr)} training / {len(valid_arr)} validation stars cannot be shared by "
                         f"{world} processes.")
    norm.save(out / "normalisation.json")
    # what "like the training set" means for the unlike_training flag, from the same split
    ood.fit(train_arr.x, train_arr.e, norm.x.mean, norm.x.std, seed=config.seed).save(out / ood.FILENAME)
    # run_id travels in the checkpoint: a --resume registers the same models row, never a second one
    state = {"member": 0, "members": [], "history": [], "run_id": uuid.uuid4().hex}
    if resume:
        state = checkpoint.load(ckpt_path, "cpu")  # broadcast to the other ranks from here
        if state["config"] != asdict(config) | {"hidden": list(config.hidden)}:
            raise XpmetError(f"{out}: the checkpoint was written with other options; resume with the same ones.")
        if state.get("world_size", 1) != world:
            raise XpmetError(f"{out}: the checkpoint was written by {state.get('world_size', 1)} process(es); "
                             f"resume with the same --nproc (not {world}).")
    return train_arr, valid_arr, norm, rows, state


def train(data_path, out_dir, config: TrainConfig | None = None, resume: bool = False, register: bool = True,
          label_override=None, progress: bool = True, on_epoch=None, nproc: int = 1,
          dist_timeout: float = dist.DEFAULT_TIMEOUT, threads: int = 0, url: str | None = None) -> Path:
    """Train a model on DATA.h5 into OUT_DIR; returns the model directory.

    ``on_epoch(member, epoch, train_loss, valid_loss)`` is called after each epoch's checkpoint,
    on every rank (for logging; an exception there stops training, and ``resume=True`` continues it).

    Data parallel: ``nproc > 1`` starts that many local processes; a process started by torchrun
    (WORLD_SIZE etc. in the environment) joins its job. Every rank trains the same model (DDP) on
    its own shard of the training rows with ``batch_size / world`` rows per step; only rank 0
    writes OUT_DIR and registers the model. ``threads``: torch CPU threads per process (0: leave).
    ``url``: the database the model is registered in (default: the configured one).

    >>> from xpmet.ml.train import train, TrainConfig
    >>> train("data.h5", "models/est", TrainConfig(kind="estimator", epochs=50))
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    if nproc > 1:
        if config.batch_size % nproc:  # also checked by rank 0 (torchrun), but no need to start processes
            raise XpmetError(f"--batch-size {config.batch_size} is the total over {nproc} processes: "
                             f"make it a multiple of {nproc}.")
        if not threads and not (config.device.startswith("cuda") or
                                (config.device == "auto" and torch.cuda.is_available())):
            threads = max(1, (os.cpu_count() or 1) // nproc)  # N processes x all cores thrash
        dist.launch(_train_worker, (data_path, out, config, resume, register, label_override, progress,
                                    on_epoch, dist_timeout, threads, url), nproc)
        return out
    if threads:
        torch.set_num_threads(threads)
    ctx = dist.setup(config.device, pick_device, dist_timeout)
    with dist.waiting(ctx.rank, dist_timeout) if ctx.active else contextlib.nullcontext():
        result = _train(ctx, data_path, out, config, resume, register, label_override, progress, on_epoch, url)
    # only on success: a failing rank keeps its connections until it has reported its error, so its
    # peers' "connection closed" comes after the cause is on record (the launcher names the cause)
    dist.cleanup(ctx)
    return result


def _train_worker(data_path, out, config, resume, register, label_override, progress, on_epoch, timeout, threads,
                  url=None):
    train(data_path, out, config, resume, register, label_override, progress, on_epoch, 1, timeout, threads, url)


def _train(ctx: dist.Context, data_path, out: Path, config: TrainConfig, resume, register, label_override,
           progress, on_epoch, url=None) -> Path:
    ckpt_path = out / "checkpoint.pt"
    device = ctx.device
    seed_everything(config.seed)
    held = {}

    def prepare():  # rank 0: the full splits stay here, the others get what they need to read theirs
        tr, va, nm, (rt, rv), st = _prepare(data_path, out, config, resume, label_override, ctx.world)
        held.update(train=tr, valid=va)
        return nm, rt, rv, st

    norm, rows_t, rows_v, state = dist.on_main(ctx, prepare)
    valid_arr = held.get("valid")  # rank 0: the metrics of the final model use the whole split
    if not ctx.active:
        my_train, my_valid = held.pop("train"), valid_arr
    else:
        pos_t = dist.shard(len(rows_t), ctx.rank, ctx.world)
        pos_v = np.arange(ctx.rank * len(rows_v) // ctx.world, (ctx.rank + 1) * len(rows_v) // ctx.world)
        if ctx.main:
            my_train, my_valid = held.pop("train").subset(pos_t), valid_arr.subset(pos_v)
        else:
            my_train = _read_rows(data_path, rows_t, pos_t, config, label_override)
            my_valid = _read_rows(data_path, rows_v, pos_v, config, label_override)
    n_train = len(rows_t)
    batch = config.batch_size // ctx.world
    weights = {}
    if config.kind == "estimator" and config.prior_weight:
        weights = {k: prior_weights(a.g_mag, norm.noise.target_g) for k, a in (("t", my_train), ("v", my_valid))}
    t_train = Tensors(my_train, norm, config.kind, device, config.correlations, weights.get("t"))
    t_valid = Tensors(my_valid, norm, config.kind, device, config.correlations, weights.get("v"))
    noise = "covariance" if t_train.chol is not None else "diagonal"
    del my_train, my_valid
    trainer = Trainer(config, norm, device)
    t_observed = t_valid  # the calibration degrades its own copies
    if config.kind == "estimator" and config.valid_copies > 0:  # early stopping on the target magnitudes
        t_valid = t_valid.degraded(trainer.augment, config.valid_copies, config.seed + 7919,
                                   pos_v if ctx.active else None, len(rows_v))
    amp = device.type == "cuda"
    main = ctx.main
    t0 = time.time()
    samples = 0
    while state["member"] < config.ensemble:
        m = state["member"]
        torch.manual_seed(config.seed + 1000 * m)
        net = build_model(config, norm).to(device)
        # DDP averages the gradients over ranks in backward (and starts from rank 0's weights)
        model = _ddp(net, ctx) if ctx.active else net
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, config.patience // 3))
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        # rank 0 keeps the single-process stream; other ranks draw their own shuffles and noise
        gen = torch.Generator(device=device).manual_seed(config.seed + 1000 * m + 1_000_003 * ctx.rank)
        cur = {"epoch": 0, "best": math.inf, "bad": 0, "best_state": None, "train": [], "valid": []}
        if state.get("current") is not None:
            cur = state["current"]
            net.load_state_dict(cur["model"])
            opt.load_state_dict(cur["opt"])
            sched.load_state_dict(cur["sched"])
            g = cur["gens"][ctx.rank] if "gens" in cur else cur["gen"]
            gen.set_state(g.cpu() if hasattr(g, "cpu") else g)
        bar = progress_bar(iterable=range(cur["epoch"], config.epochs), desc=f"{config.kind} #{m}", enabled=progress and main,
                   initial=cur["epoch"], total=config.epochs, leave=False)
        for epoch in bar:
            mean_loss = train_epoch(model, opt, scaler, trainer, t_train, batch, gen, amp, config.clip)
            # the bare module: shards differ in size, so no DDP collectives may hide in these forwards
            vsum, vn = validation_sums(net, trainer, t_valid, batch * 8)
            # identical numbers on every rank: same LR schedule and the same stopping epoch
            tl, vsum, vn = dist.sum_across(ctx, [mean_loss, vsum, vn])
            mean_loss, vloss = tl / ctx.world, vsum / max(vn, 1)
            samples += t_train.n * ctx.world
            sched.step(vloss)
            cur["train"].append(mean_loss)
            cur["valid"].append(vloss)
            if vloss < cur["best"] - 1e-4:
                cur["best"], cur["bad"] = vloss, 0
                cur["best_state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                cur["bad"] += 1
            cur["epoch"] = epoch + 1
            bar.set_postfix(loss=f"{cur['train'][-1]:.4f}", valid=f"{vloss:.4f}", best=f"{cur['best']:.4f}")
            cur.update(model=net.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(), gen=gen.get_state())
            if ctx.active:  # every rank's stream, so --resume continues each exactly
                cur["gens"] = dist.gather_objects(ctx, gen.get_state())
            state["current"] = cur
            state["config"] = asdict(config) | {"hidden": list(config.hidden)}
            state["world_size"] = ctx.world
            if main:
                _atomic_save(state, ckpt_path)
                fault("train_after_epoch")
            if on_epoch is not None:
                on_epoch(m, epoch, cur["train"][-1], vloss)
            if cur["bad"] >= config.patience:
                break
        bar.close()
        state["members"].append(cur["best_state"] or net.state_dict())
        state["history"].append({"train": cur["train"], "valid": cur["valid"], "best": cur["best"],
                                 "epochs": cur["epoch"]})
        state["member"] = m + 1
        state["current"] = None
        if main:
            _atomic_save(state, ckpt_path)
    scale = None
    if config.kind == "estimator" and config.calibrate_sigma:  # every rank: the sums are shared
        t_cal = t_valid
        if config.valid_copies > 0:
            t_cal = t_observed.degraded(trainer.augment, calibration_copies(len(rows_v), config.valid_copies),
                                        config.seed + 104729, pos_v if ctx.active else None, len(rows_v))
        scale = sigma_scale(state["members"], config, norm, t_cal, batch * 8, ctx)
        del t_cal
    del t_observed
    seconds = time.time() - t0
    if not main:
        return out
    torch.save({"members": state["members"], "kind": config.kind, "hidden": list(config.hidden)}, out / "weights.pt")
    fault("train_after_weights")
    (out / "history.json").write_text(json.dumps(state["history"]))
    learning_curves(state["history"], out / "plots" / "learning_curve.png")
    attrs = ds.attributes(data_path)
    cfg = asdict(config) | {"hidden": list(config.hidden), "data": str(Path(data_path).resolve()),
                            "data_attributes": attrs, "n_train": n_train, "n_valid": len(valid_arr),
                            "device": str(device), "train_seconds": seconds, "xpmet_version": __version__,
                            "world_size": ctx.world, "backend": ctx.backend, "batch_per_rank": batch,
                            "samples_per_second": samples / seconds if seconds > 0 else None,
                            "run_id": state.get("run_id")}
    if config.kind == "estimator":  # what the degradation drew from: a file without correlations -> diagonal
        cfg |= {"augment_noise_used": noise, "extra_inputs": list(norm.extra.names) if norm.extra else []}
        if scale is not None:
            cfg["sigma_scale"] = scale
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    fp = ds.fingerprint(data_path)
    (out / "fingerprint.txt").write_text(fp + "\n")
    # validation metrics of the final model (the test split stays untouched for `xpmet evaluate`)
    from xpmet.ml.evaluate import metrics_for
    from xpmet.ml.inference import load_predictor
    pred = load_predictor(out)
    metrics = {"valid": metrics_for(pred, valid_arr), "best_valid_loss": [h["best"] for h in state["history"]]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_float))
    fault("train_before_register")
    if register:
        model_id = register_model(out, cfg, metrics, fp, url)
        fault("train_after_register")
        (out / "model.json").write_text(json.dumps({"model_id": model_id}))
    ckpt_path.unlink(missing_ok=True)
    return out


def _ddp(net, ctx: dist.Context):
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def _read_rows(data_path, rows, pos, config: TrainConfig, label_override):
    """This rank's shard: only its rows are read (pos may repeat rows to pad the shard)."""
    u, inv = np.unique(pos, return_inverse=True)
    arr = ds.read(data_path, rows=rows[u], **_reads(config))
    if label_override is not None:
        arr = label_override(arr)
    return arr.subset(inv)


def _json_float(v):
    return float(v) if isinstance(v, (np.floating, np.integer)) else str(v)


def _finite(v):
    """JSON for PostgreSQL: NaN and infinities (which jsonb rejects) become null."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _atomic_save(obj, path: Path):
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_epoch(model, opt, scaler, trainer: Trainer, t: Tensors, batch_size: int, gen, amp: bool,
                clip: float = 0.0) -> float:
    """One pass over shuffled in-memory tensors; returns the mean batch loss."""
    model.train()
    device = trainer.device
    perm = torch.randperm(t.n, generator=gen, device=device)
    tot = torch.zeros((), device=device)  # summed on the device: no sync per batch
    nb = 0
    for i in range(0, t.n, batch_size):
        idx = perm[i:i + batch_size]
        with torch.autocast(device.type, enabled=amp):
            loss = trainer.loss(model, t, idx, gen, train=True)
        opt.zero_grad(set_to_none=True)
        if amp:
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
            opt.step()
        tot += loss.detach()
        nb += 1
    return float(tot) / max(nb, 1)


def validation_loss(model, trainer: Trainer, t: Tensors, batch: int) -> float:
    tot, n = validation_sums(model, trainer, t, batch)
    return tot / max(n, 1)


#: the share of stars a 1-sigma uncertainty covers (|z| < 1 for a Gaussian); sigma_scale matches it
COVERAGE_1SIGMA = 0.6827
#: the calibration's own degraded copies of the validation stars (at most CALIBRATION_MAX_ROWS rows):
#: the degradation noise differs between copies, so more copies pin the coverage down further
CALIBRATION_COPIES = 12
CALIBRATION_MAX_ROWS = 240_000


def calibration_copies(n_valid: int, valid_copies: int) -> int:
    return max(valid_copies, min(CALIBRATION_COPIES, CALIBRATION_MAX_ROWS // max(n_valid, 1)))


@torch.no_grad()
def sigma_scale(members, config: TrainConfig, norm: Normaliser, t: Tensors, batch: int, ctx,
                bounds=(0.25, 4.0), steps: int = 40) -> list[float]:
    """Per label, the factor k for the stated uncertainty under which 68.27 % of the validation stars
    (degraded to the target magnitudes, as the stars predicted) have |r| < sqrt(k^2 var + y_err^2):
    the coverage a 1-sigma interval promises.

    - A coverage, not a mean square: the residuals are heavier-tailed than a Gaussian (survey
      outliers, hard stars), and matching their mean square left the typical star's uncertainty
      20-25 % too large (robust z-spread 0.75-0.80 on never-surveyed stars, bench_train, 60,000 stars).
    - Over the stars whose label error is below the model's stated sigma (all stars where none is):
      where the label error dominates, k hangs on the small difference between the residual and that
      error, and a label error misstated by 5 % moved k by 30 % (bench_train, 20,000 stars; against
      the truth the restricted k is within 0.06 of the right one).

    r and var are the ensemble's, combined as inference combines them (mixture). Bisection in log k;
    the counts are summed over the ranks' shards, so every rank finds the same k."""
    L = t.layout
    mus, sig2 = [], []
    for state in members:
        net = build_model(config, norm).to(t.packed.device)
        net.load_state_dict(state)
        net.eval()
        out = [net(t.fixed[i:i + batch]) for i in range(0, t.n, batch)]
        mus.append(torch.cat([o[0] for o in out]).double())
        sig2.append(torch.exp(2 * torch.cat([o[1] for o in out]).double()))
    mu, var = ensemble_mixture(torch.stack(mus), torch.stack(sig2))
    r2 = (t.packed[:, L["y"]].double() - mu) ** 2
    e2 = t.packed[:, L["y_err"]].double() ** 2
    w = t.packed[:, L["known"]].double()
    model_led = w * (e2 < var)
    n_led = np.asarray(dist.sum_across(ctx, model_led.sum(0).tolist()))
    w = torch.where(torch.as_tensor(n_led > 0, device=w.device), model_led, w)
    target = COVERAGE_1SIGMA * np.asarray(dist.sum_across(ctx, w.sum(0).tolist()))
    lo, hi = np.full(len(target), np.log(bounds[0])), np.full(len(target), np.log(bounds[1]))
    for _ in range(steps):  # the coverage rises with k
        k2 = torch.as_tensor(np.exp(2 * (lo + hi) / 2), device=var.device)
        got = np.asarray(dist.sum_across(ctx, (w * (r2 < k2 * var + e2)).sum(0).tolist()))
        short = got < target
        lo, hi = np.where(short, (lo + hi) / 2, lo), np.where(short, hi, (lo + hi) / 2)
    return [float(np.exp((a + b) / 2)) if n > 0 else 1.0 for a, b, n in zip(lo, hi, target)]


@torch.no_grad()
def validation_sums(model, trainer: Trainer, t: Tensors, batch: int) -> tuple[float, int]:
    """(sum of batch losses x batch sizes, rows): summable over the ranks' shards."""
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, t.n, batch):
        idx = torch.arange(i, min(t.n, i + batch), device=trainer.device)
        tot += float(trainer.loss(model, t, idx)) * len(idx)
        n += len(idx)
    return tot, n


def register_model(out: Path, cfg: dict, metrics: dict, fingerprint: str, url: str | None = None) -> int:
    """Insert the model into xpmet.models; returns its model_id."""
    import sqlalchemy as sa
    import xpmet
    from xpmet.db.models import models
    values = dict(name=cfg.get("name") or out.name, kind=cfg["kind"], path=str(out.resolve()),
                  config=_finite(json.loads(json.dumps(cfg, default=str))),
                  metrics=_finite(json.loads(json.dumps(metrics, default=_json_float))),
                  data_fingerprint=fingerprint, xpmet_version=__version__)
    with xpmet.connect(url).begin() as c:
        if cfg.get("run_id"):  # killed after registering, then resumed: the row this run already wrote
            mid = c.execute(sa.text("SELECT model_id FROM xpmet.models WHERE config ->> 'run_id' = :r"),
                            {"r": cfg["run_id"]}).scalar()
            if mid is not None:
                c.execute(sa.update(models).where(models.c.model_id == mid).values(**values))
                return mid
        return c.execute(sa.insert(models).values(**values).returning(models.c.model_id)).scalar_one()


if __name__ == "__main__":  # torchrun --nproc_per_node N -m xpmet.ml.train DATA --out DIR [xpmet train options]
    import sys
    from xpmet.cli import main as cli
    cli(["train", *sys.argv[1:]], prog_name="xpmet")  # the CLI's one-line errors
