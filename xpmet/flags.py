"""Every bitmask xpmet stores, in one place: bit numbers, what each means, and the SQL they render into.

Five families, one per column:

- ``SURVEY_QUALITY_BITS``: ``survey_star.quality_flags`` (set by the survey loader);
- ``XMATCH_BITS``: ``xmatch.flags`` (set by the crossmatch);
- ``LABEL_BITS``: ``labels.label_flags`` (set by the label views);
- ``PREDICTION_BITS``: ``predictions.quality_flags`` (set by inference; ``recommended`` = none set).
- ``EXTERNAL_PHOT_BITS``: ``external_photometry.phot_flags`` (set by that view).

The SQL files under db/sql/ never spell a bit number: they write ``{{bit:label.feh_discordant}}``
(the bit number) or ``{{mask:label.feh_discordant|ambiguous_match}}`` (the OR of the values), and
:func:`render_sql` fills them in when a migration applies the file.
"""
from __future__ import annotations

import re

SURVEY_QUALITY_BITS = {
    "star_bad": 0,          # the survey says the fit failed (e.g. APOGEE ASPCAPFLAG STAR_BAD)
    "duplicate": 1,         # a repeat observation, not the survey's primary row
    "low_snr": 2,
    "no_position": 3,       # ra/dec missing: the row can only match by its declared Gaia id
    "teff_invalid": 4,      # sentinel, NaN or outside the physical range: stored as NULL
    "logg_invalid": 5,
    "feh_invalid": 6,
    "alpha_fe_invalid": 7,
    "teff_flagged": 8,      # the survey flags this label (the row's other labels stay usable)
    "logg_flagged": 9,
    "feh_flagged": 10,
    "alpha_fe_flagged": 11,
    "error_invalid": 12,    # an uncertainty was a sentinel, NaN or <= 0: stored as NULL (floor used)
    "mh_without_alpha": 13,  # the survey gives [M/H], and without [alpha/Fe] no [Fe/H] follows: feh NULL
    "not_a_label_source": 14,  # the descriptor says [labels] training = false (e.g. metallicities from Gaia XP)
}
#: Survey-quality bits that make the whole row unusable for labels (quality_ok = false).
SURVEY_ROW_BITS = ("star_bad", "duplicate", "low_snr", "not_a_label_source")

XMATCH_BITS = {
    "ambiguous": 0,        # another Gaia source within the radius and no declared id to settle it
    "duplicate_claim": 1,  # another row of the same survey matched the same Gaia source
    "id_rejected": 2,      # the declared Gaia source is farther than id_radius: position used instead
    "id_not_found": 3,     # the declared Gaia id is not in xpmet.gaia_source (not loaded, or a DR2 id)
    "no_pm": 4,            # the match has no Gaia proper motion: compared at the Gaia epoch, wider radius
    "dr2_id": 5,           # the row declares a DR2 id; it confirmed the positional match
    "id_not_nearest": 6,   # matched by declared id although another source is nearer
    "no_position": 7,      # the row has no position: the declared id could not be validated
}

LABEL_BITS = {
    "teff_discordant": 0,      # chi2/dof of the surveys' Teff above label_setting.max_chi2_dof
    "logg_discordant": 1,
    "feh_discordant": 2,
    "alpha_fe_discordant": 3,
    "rejected_measurement": 4,  # a survey's value was rejected (leave-one-out |z| > clip, 3+ surveys)
    "uncalibrated_survey": 5,  # a contributing survey has no zero point (no overlap with the references)
    "ambiguous_match": 6,      # a contributing crossmatch was ambiguous
    "duplicate_claim": 7,      # two rows of one survey matched this source
    "single_survey_feh": 8,    # [Fe/H] from one survey only: no consistency check possible
}

#: Prediction quality bits (xpmet.ml.inference sets them; thresholds are constants there). "Flags:"
#: the share of genuine stars each bit flags, median [range] over seeds 7, 8, 9 of
#: ``benchmarks/bench_train.py --n-stars 60000 --only flags`` (SIMULATED sky, default single-model
#: estimator, ~19,550 never-surveyed stars scored per seed; the same runs flag 99.8 % of the ~450
#: injected quasars and white dwarfs, and recommend 91.4 % [88.5-91.7] of [Fe/H] < -2 stars against
#: 93.1 % of all stars).
PREDICTION_BITS = {
    # a predicted Teff, log g or [Fe/H] beyond the range the training labels span (3rd smallest to
    # 3rd largest value) by more than twice its uncertainty; rare-but-covered labels (very metal-poor
    # stars inside the range) do not trip it. Flags 0.1 % [0.0-0.2]; 0 % of [Fe/H] < -2 stars inside
    # the training labels' range in Teff, log g and [Fe/H] (2-34 % of those outside it, e.g. blue
    # horizontal-branch stars hotter than any training star, whose [Fe/H] is then +0.2-0.6 dex off)
    "out_of_training_range": 0,
    # S/N of the whole spectrum, sqrt(sum (c/e)^2) over the 110 coefficients, below LOW_SNR = 300:
    # noisier than 95 % of real DR3 spectra at 17 < G < 17.65 (tests/data/xp), i.e. at or beyond
    # the XP publication limit; 1.9 % of those 2,000 real spectra. Flags 0.4 % [0.4-0.4]
    "low_snr": 1,
    "missing_band": 2,           # BP or RP coefficients missing. Flags 0.5 % [0.4-0.5] (the simulator's rate)
    # emulator: reduced chi2 > POOR_FIT_CHI2; ensemble: members disagree by > POOR_FIT_SPREAD sigma;
    # single estimator: [Fe/H] moves by more than POOR_FIT_SENSITIVITY x its stated uncertainty when
    # the coefficients move by their errors (first-order propagation through the network): the
    # stated uncertainty cannot be trusted (z-spread 7.2 on the 20 stars where it fired, 0.98 elsewhere).
    # Flags 0.0 % [0.0-0.1]
    "poor_fit": 3,
    # the spectrum is unlike the training spectra (xpmet.ml.ood: residual from the training stars'
    # principal components, or distance within them, far beyond the training stars' 99th
    # percentile): quasars, white dwarfs, hot stars, blends. Flags 0.1 % [0.1-0.2] of stars (0.3 % of
    # [Fe/H] < -2 stars) and 98.9 % of the quasars and white dwarfs on its own
    "unlike_training": 4,
    # G outside the magnitudes the model was trained on (training split; fainter down to the
    # augmentation's target magnitudes when spectra were degraded). Flags 0 % (stars predicted lie
    # within the augmented range; fires on stars brighter than every training star)
    "outside_training_g": 5,
    # gaia_source ruwe > MAX_RUWE = 1.4: a binary or resolved pair may blend the spectrum. Flags 5.8 %
    # [5.6-5.8] (the simulator's astrometric binaries and close pairs)
    "high_ruwe": 6,
    # |corrected BP/RP excess factor C*| > 3 sigma_C*(G) (Riello et al. 2021 eqs. 6, 18): BP/RP flux
    # inconsistent with G, a blend or bad background. Flags 3.3 % [3.1-3.3] (the simulator's close
    # pairs and the relation's 3-sigma tail)
    "bp_rp_excess": 7,
}

#: ``external_photometry.phot_flags`` (the view, db/sql/external_photometry.sql, reads the catalogues'
#: own flags and the Gaia best-neighbour counts). A band that is an upper limit has no magnitude there.
EXTERNAL_PHOT_BITS = {
    "tmass_j_poor": 0,          # 2MASS ph_qual of the band is not A, B or C (S/N < 5, or no reliable error)
    "tmass_h_poor": 1,
    "tmass_ks_poor": 2,
    "tmass_contaminated": 3,    # 2MASS cc_flg is not 0 in J, H or Ks (persistence, diffraction spike, confusion)
    "tmass_shared": 4,          # number_of_mates > 0: other Gaia sources share this 2MASS source (blend)
    "w1_poor": 5,               # AllWISE ph_qual of the band is not A or B (S/N < 3)
    "w2_poor": 6,
    "allwise_contaminated": 7,  # AllWISE cc_flags is not 0 in W1 or W2 (spike, persistence, halo, ghost)
    "allwise_shared": 8,        # number_of_mates > 0 for the AllWISE neighbour
}

FAMILIES = {"survey_quality": SURVEY_QUALITY_BITS, "xmatch": XMATCH_BITS, "label": LABEL_BITS,
            "prediction": PREDICTION_BITS,
            "external_photometry": EXTERNAL_PHOT_BITS}


def mask(bits: dict[str, int], *names: str) -> int:
    """The OR of the values of the named bits (KeyError for a name the family lacks)."""
    return sum(1 << bits[n] for n in set(names))


def decode(bits: dict[str, int], value: int) -> list[str]:
    """The names of the bits set in ``value``."""
    return [n for n, b in sorted(bits.items(), key=lambda kv: kv[1]) if value >> b & 1]


_PLACEHOLDER = re.compile(r"\{\{\s*(bit|mask):(\w+)\.([\w|]+)\s*\}\}")


def render_sql(text: str) -> str:
    """Replace ``{{bit:family.name}}`` and ``{{mask:family.a|b}}`` with numbers; unknown names raise."""
    def sub(m: re.Match) -> str:
        kind, family, names = m.group(1), FAMILIES[m.group(2)], m.group(3).split("|")
        if kind == "bit":
            if len(names) != 1:
                raise ValueError(f"{m.group(0)}: bit takes one name")
            return str(family[names[0]])
        return str(mask(family, *names))
    out = _PLACEHOLDER.sub(sub, text)
    if "{{" in out:
        raise ValueError(f"unrendered placeholder near {out[out.index('{{'):][:60]!r}")
    return out
