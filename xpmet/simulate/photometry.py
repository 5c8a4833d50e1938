"""2MASS PSC and AllWISE photometry of the simulated sky, with the Gaia DR3 best-neighbour files that join them.

THE DATA WRITTEN HERE ARE SIMULATED. Files (under ``photometry/``), in the layouts users download:

- ``tmass_psc.csv``: IRSA fp_psc columns (designation, ra, dec, j_m, j_msigcom, ..., ph_qual, cc_flg);
- ``allwise.csv``: IRSA allwise_p3as_psd columns (designation "Jhhmmss.ss+ddmmss.s", w1mpro, w1sigmpro, ...);
- ``tmasspscxsc_best_neighbour/tmasspscxscBestNeighbour0001.csv.gz`` and
  ``allwise_best_neighbour/allwiseBestNeighbour0001.csv.gz``: the Gaia DR3 bulk cross-match files (ECSV).

Modelling choices (simple, documented, good to a few hundredths of a magnitude for FGK stars):
- intrinsic colours G-Ks, J-Ks, H-Ks, Ks-W1, W1-W2 interpolated in Teff from tables shaped on
  dwarf and giant sequences (Pecaut & Mamajek 2013-like); giants (log g < 3.5) are redder in J-Ks and
  bluer in W1-W2 (CO absorption in W2, stronger when metal-rich); G-Ks shifts by 0.06 mag per dex of
  [Fe/H] (line blanketing in G). Quasars get AGN colours (W1-W2 ~ 1), white dwarfs the hot end of the table;
- extinction A_lambda / A0: J 0.243, H 0.131, Ks 0.078, W1 0.039, W2 0.026 (Wang & Chen 2019), with
  the star's own A0 and A_G from the truth;
- depth and errors: S/N = 10 at J 15.8, H 15.1, Ks 14.3 (2MASS) and S/N = 5 at W1 16.9, W2 15.95
  (AllWISE); sigma = sqrt((1.0857 / S/N)^2 + floor^2); 2MASS keeps sources with S/N >= 7 in a band,
  AllWISE with S/N >= 5 in W1 or W2; a band below S/N 3 (2MASS) or 2 (AllWISE) is an upper limit
  (ph_qual U, magnitude at the limit, no error). ph_qual letters follow the catalogues' S/N bins;
- positions at the catalogue epochs (2MASS 1997.5-2001, AllWISE 2010.5) from the Gaia proper motions,
  with 0.08" (2MASS) and 0.2" (AllWISE) noise; Gaia sources closer than 2.5" (2MASS) or 5" (AllWISE)
  are one blended external source (fluxes summed, flux-weighted position): each of them has it as best
  neighbour, number_of_mates = the others;
- 1.5 % of 2MASS and 2 % of AllWISE rows carry a contamination flag (cc_flg / cc_flags).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xpmet.simulate import galaxy
from xpmet.simulate.surveys import _sexagesimal_ids

TMASS_BN_DIR, TMASS_BN_FILE = "tmasspscxsc_best_neighbour", "tmasspscxscBestNeighbour0001.csv.gz"
ALLWISE_BN_DIR, ALLWISE_BN_FILE = "allwise_best_neighbour", "allwiseBestNeighbour0001.csv.gz"

_TEFF = np.array([3000, 3300, 3500, 3800, 4000, 4500, 5000, 5500, 6000, 6500, 7000, 8000, 10000, 15000, 30000.])
_G_KS = np.array([4.7, 4.1, 3.65, 3.2, 2.85, 2.30, 1.90, 1.56, 1.27, 1.02, 0.80, 0.45, 0.0, -0.35, -0.75])
_J_KS = np.array([0.92, 0.88, 0.86, 0.84, 0.80, 0.68, 0.55, 0.44, 0.35, 0.27, 0.20, 0.10, 0.0, -0.08, -0.15])
_H_KS = np.array([0.32, 0.28, 0.25, 0.22, 0.20, 0.14, 0.10, 0.07, 0.05, 0.03, 0.02, 0.01, 0.0, -0.02, -0.05])
_KS_W1 = np.array([0.25, 0.18, 0.15, 0.10, 0.08, 0.06, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02, 0.0, -0.03, -0.05])
_W1_W2 = np.array([0.20, 0.12, 0.06, 0.0, -0.03, -0.06, -0.06, -0.05, -0.04, -0.03, -0.02, 0.0, 0.0, 0.0, 0.0])
#: A_lambda / A0 (Wang & Chen 2019)
EXTINCTION = {"j": 0.243, "h": 0.131, "ks": 0.078, "w1": 0.039, "w2": 0.026}
#: (magnitude at the reference S/N, reference S/N, error floor)
DEPTH = {"j": (15.8, 10.0, 0.02), "h": (15.1, 10.0, 0.02), "ks": (14.3, 10.0, 0.02),
         "w1": (16.9, 5.0, 0.015), "w2": (15.95, 5.0, 0.02)}


def true_magnitudes(rng, truth: dict) -> dict[str, np.ndarray]:
    """Noiseless apparent J, H, Ks, W1, W2 of every source in ``truth`` (simulate's truth columns)."""
    teff = np.clip(np.nan_to_num(truth["teff"], nan=5500.0), _TEFF[0], _TEFF[-1])
    logg = np.nan_to_num(truth["logg"], nan=4.5)
    feh = np.nan_to_num(truth["feh"], nan=0.0)
    a0 = np.nan_to_num(truth["a0"], nan=0.0)
    ag = np.nan_to_num(truth["ag"], nan=0.0)
    giant = logg < 3.5
    cool = np.clip((5000.0 - teff) / 1000.0, 0.0, 1.5)
    g_ks = np.interp(teff, _TEFF, _G_KS) + 0.06 * feh * (teff < 7000)
    j_ks = np.interp(teff, _TEFF, _J_KS) + 0.15 * cool * giant
    h_ks = np.interp(teff, _TEFF, _H_KS) + 0.05 * cool * giant
    ks_w1 = np.interp(teff, _TEFF, _KS_W1)
    w1_w2 = np.where(giant, -0.03 - 0.07 * cool * 10 ** (0.25 * np.clip(feh, -3, 0.5)),
                     np.interp(teff, _TEFF, _W1_W2))
    qso = np.asarray(truth["source_class"]).astype(str) == "quasar"
    if qso.any():  # AGN: red in the near-IR, W1 - W2 ~ 1 (Stern et al. 2012)
        k = int(qso.sum())
        g_ks[qso] = 2.3 + rng.normal(0, 0.3, k)
        j_ks[qso], h_ks[qso] = 1.4 + rng.normal(0, 0.15, k), 0.7 + rng.normal(0, 0.1, k)
        ks_w1[qso] = 1.0 + rng.normal(0, 0.2, k)
        w1_w2[qso] = 1.0 + rng.normal(0, 0.2, k)
    ks = truth["phot_g_mean_mag"] - ag - g_ks + EXTINCTION["ks"] * a0
    out = {"ks": ks,
           "j": ks + j_ks + (EXTINCTION["j"] - EXTINCTION["ks"]) * a0,
           "h": ks + h_ks + (EXTINCTION["h"] - EXTINCTION["ks"]) * a0,
           "w1": ks - ks_w1 + (EXTINCTION["w1"] - EXTINCTION["ks"]) * a0}
    out["w2"] = out["w1"] - w1_w2 + (EXTINCTION["w2"] - EXTINCTION["w1"]) * a0
    return out


def _blend_groups(ra, dec, radius_arcsec: float) -> np.ndarray:
    """A group label per source: sources closer than the radius (transitively) share one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree
    r, d = np.radians(ra), np.radians(dec)
    xyz = np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])
    pairs = cKDTree(xyz).query_pairs(np.radians(radius_arcsec / 3600.0), output_type="ndarray")
    n = len(ra)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else \
        coo_matrix((n, n))
    return connected_components(graph, directed=False)[1]


def _combine(groups, mags: dict, ra, dec, weight_band: str):
    """Per group: summed-flux magnitudes, flux-weighted position, members' count and first index."""
    uniq, first, inverse, counts = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    out = {}
    for b, m in mags.items():
        out[b] = -2.5 * np.log10(np.bincount(inverse, 10 ** (-0.4 * m)))
    w = 10 ** (-0.4 * mags[weight_band])
    wsum = np.bincount(inverse, w)
    # flux-weighted offsets from the group's first member (no wrap-around at RA = 0)
    dra = ((ra - ra[first][inverse] + 180.0) % 360.0 - 180.0)
    cra = (ra[first] + np.bincount(inverse, w * dra) / wsum) % 360.0
    cdec = dec[first] + np.bincount(inverse, w * (dec - dec[first][inverse])) / wsum
    return out, cra, cdec, inverse, counts


def _observe(rng, m_true, band):
    """(observed magnitude, error or NaN for an upper limit, S/N)."""
    m_ref, snr_ref, floor = DEPTH[band]
    snr = snr_ref * 10 ** (-0.4 * (m_true - m_ref))
    sigma = np.hypot(1.0857 / snr, floor)
    return m_true + rng.normal(0.0, 1.0, m_true.size) * sigma, sigma, snr


def _qual(snr, edges, letters, upper) -> np.ndarray:
    idx = np.searchsorted(np.asarray(edges), snr, side="right")  # edges ascending
    return np.where(snr < edges[0], upper, np.asarray(list(letters))[::-1][np.clip(idx - 1, 0, len(letters) - 1)])


def _at_epoch(truth, epoch):
    """ICRS positions at ``epoch`` (Julian years) from the Gaia 2016.0 positions and proper motions."""
    return galaxy.propagate(truth["ra"], truth["dec"], np.nan_to_num(truth["pmra"]), np.nan_to_num(truth["pmdec"]),
                            epoch - 2016.0)


def _catalogue(rng, truth, mags, bands, radius, epoch, pos_noise, keep_snr):
    """The external catalogue's sources (blends combined) and each Gaia source's neighbour index."""
    ra, dec = _at_epoch(truth, epoch)
    groups = _blend_groups(truth["ra"], truth["dec"], radius)
    comb, cra, cdec, inverse, counts = _combine(groups, {b: mags[b] for b in bands}, ra, dec, bands[-1])
    n = cra.size
    obs = {b: _observe(rng, comb[b], b) for b in bands}
    keep = np.zeros(n, bool)
    for b in bands:
        keep |= obs[b][2] >= keep_snr
    noise = pos_noise / 3600.0
    cdec_obs = cdec + rng.normal(0, noise, n)
    cra_obs = (cra + rng.normal(0, noise, n) / np.cos(np.radians(cdec))) % 360.0
    sep = _separation(ra, dec, cra_obs[inverse], cdec_obs[inverse])
    return obs, keep, cra_obs, cdec_obs, inverse, counts, sep


def _separation(ra1, dec1, ra2, dec2):
    """Angular separation in arcsec (haversine)."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600.0


def _cc(rng, n, width, rate, letters):
    flags = np.full(n, "0" * width)
    hit = np.flatnonzero(rng.random(n) < rate)
    for i, band, ch in zip(hit, rng.integers(0, min(width, 3), hit.size), rng.choice(list(letters), hit.size)):
        s = list(flags[i])
        s[band] = ch
        flags[i] = "".join(s)
    return flags


def write_photometry(rng, truth: dict, outdir) -> dict:
    """Write the four files under ``outdir``; returns {name: rows} (truth: simulate's truth columns)."""
    from xpmet.simulate.writers import Column
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    mags = true_magnitudes(rng, truth)
    counts = {}

    # 2MASS PSC
    epoch = rng.uniform(1997.5, 2001.0)
    obs, keep, ra, dec, inverse, members, sep = _catalogue(rng, truth, mags, ("j", "h", "ks"), 2.5, epoch, 0.08, 7.0)
    desig = _sexagesimal_ids(ra, dec, "", 2, 1)
    keep &= _first_of_each(desig)
    cols = {"designation": desig, "ra": np.round(ra, 6), "dec": np.round(dec, 6)}
    qual = []
    for b in ("j", "h", "ks"):
        m, s, snr = obs[b]
        limit = DEPTH[b][0] + 2.5 * np.log10(DEPTH[b][1] / 3.0)  # the S/N = 3 magnitude
        upper = snr < 3.0
        cols[f"{b}_m"] = np.round(np.where(upper, limit, m), 3)
        cols[f"{b}_msigcom"] = np.round(np.where(upper, np.nan, s), 3)
        qual.append(_qual(snr, [3.0, 5.0, 7.0, 10.0], "ABCD", "U"))
    cols["ph_qual"] = np.char.add(np.char.add(qual[0], qual[1]), qual[2])
    cols["cc_flg"] = _cc(rng, ra.size, 3, 0.015, "cdps")
    counts["tmass_psc"] = _write_csv(outdir / "tmass_psc.csv", cols, keep)
    oid = np.empty(ra.size, np.int64)
    oid[np.argsort(dec, kind="stable")] = np.arange(1, ra.size + 1)  # increasing with Declination
    bn_cols = [Column("source_id", "int64"), Column("original_ext_source_id", "string"),
               Column("angular_distance", "float32", "arcsec"), Column("xm_flag", "int16"),
               Column("clean_tmass_psc_xsc_oid", "int32"), Column("number_of_neighbours", "int32"),
               Column("number_of_mates", "int16")]
    counts["tmass_best_neighbour"] = _write_bn(outdir / TMASS_BN_DIR / TMASS_BN_FILE, bn_cols, truth, keep, inverse,
                                               members, sep, desig, oid, "clean_tmass_psc_xsc_oid", rng)

    # AllWISE
    obs, keep, ra, dec, inverse, members, sep = _catalogue(rng, truth, mags, ("w1", "w2"), 5.0, 2010.5, 0.2, 5.0)
    desig = _sexagesimal_ids(ra, dec, "J", 2, 1, dot=True)
    keep &= _first_of_each(desig)
    cols = {"designation": desig, "ra": np.round(ra, 7), "dec": np.round(dec, 7)}
    qual = []
    for b in ("w1", "w2"):
        m, s, snr = obs[b]
        limit = DEPTH[b][0] + 2.5 * np.log10(DEPTH[b][1] / 2.0)  # the S/N = 2 magnitude
        upper = snr < 2.0
        cols[f"{b}mpro"] = np.round(np.where(upper, limit, m), 3)
        cols[f"{b}sigmpro"] = np.round(np.where(upper, np.nan, s), 3)
        cols[f"{b}snr"] = np.round(snr, 1)
        qual.append(_qual(snr, [2.0, 3.0, 10.0], "ABC", "U"))
    cols["ph_qual"] = np.char.add(np.char.add(qual[0], qual[1]), "UU")
    cols["cc_flags"] = _cc(rng, ra.size, 4, 0.02, "dhpoDH")
    counts["allwise"] = _write_csv(outdir / "allwise.csv", cols, keep)
    oid = np.arange(1, ra.size + 1, dtype=np.int64)
    bn_cols[4] = Column("allwise_oid", "int64")
    counts["allwise_best_neighbour"] = _write_bn(outdir / ALLWISE_BN_DIR / ALLWISE_BN_FILE, bn_cols, truth, keep,
                                                 inverse, members, sep, desig, oid, "allwise_oid", rng)
    (outdir / "SIMULATED.txt").write_text(
        "THESE FILES ARE SIMULATED: not 2MASS, AllWISE or Gaia data. They imitate IRSA's catalogue\n"
        "query results and the Gaia DR3 bulk best-neighbour files (see xpmet/simulate/photometry.py).\n"
        "Load them with: xpmet etl photometry tmass tmass_psc.csv --best-neighbour "
        f"{TMASS_BN_DIR}/{TMASS_BN_FILE}\n"
        f"               xpmet etl photometry allwise allwise.csv --best-neighbour {ALLWISE_BN_DIR}/{ALLWISE_BN_FILE}\n")
    return counts


def _first_of_each(desig) -> np.ndarray:
    """False for a repeated designation (two catalogue sources within the truncation step)."""
    keep = np.zeros(desig.size, bool)
    keep[np.unique(desig, return_index=True)[1]] = True
    return keep


def _write_csv(path: Path, cols: dict, keep: np.ndarray) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    table = pa.table({k: pa.array(np.asarray(v)[keep], from_pandas=True) for k, v in cols.items()})
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:  # a plain header line and unquoted values, as IRSA's CSV
        fh.write((",".join(cols) + "\n").encode())
        pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    tmp.replace(path)
    return int(keep.sum())


def _write_bn(path: Path, columns, truth, keep, inverse, members, sep, desig, oid, oid_name, rng) -> int:
    """The best-neighbour rows of the Gaia sources whose external source made it into the catalogue."""
    from xpmet.simulate.writers import GzipEcsvWriter
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.flatnonzero(keep[inverse])
    rows = rows[np.argsort(truth["source_id"][rows])]
    ext = inverse[rows]
    values = {"source_id": truth["source_id"][rows], "original_ext_source_id": desig[ext],
              "angular_distance": np.round(sep[rows], 4).astype(np.float32),
              "xm_flag": np.zeros(rows.size, np.int16), oid_name: oid[ext],
              "number_of_neighbours": (1 + (rng.random(rows.size) < 0.03)).astype(np.int32),
              "number_of_mates": (members[ext] - 1).astype(np.int16)}
    with GzipEcsvWriter(path, columns, meta={"simulated": True}) as w:
        w.write(values)
    return int(rows.size)
