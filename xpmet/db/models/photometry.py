"""External photometry (2MASS PSC, AllWISE) and the Gaia DR3 best-neighbour tables that join it to Gaia.

``xpmet etl photometry`` fills them (xpmet.etl.photometry, descriptors in etl/photometry/); the view
``xpmet.external_photometry`` (db/sql/external_photometry.sql) gives one row per Gaia source with
the magnitudes users query and ``xpmet export`` writes (EXTERNAL_PHOT). Catalogue columns keep the
names IRSA and the Gaia archive use; designations are stored normalised (trimmed, upper case, no
"2MASS J" / "J" prefix) so that the catalogue and the best-neighbour files always agree.
"""
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, REAL

from xpmet.db.models.base import metadata

#: Columns of the view xpmet.external_photometry that ``xpmet export`` writes as /phot/<name>
#: (NaN where no photometry is loaded, no best neighbour exists, or the band is an upper limit).
EXTERNAL_PHOT = ("tmass_j", "tmass_j_err", "tmass_h", "tmass_h_err", "tmass_ks", "tmass_ks_err",
                 "w1", "w1_err", "w2", "w2_err")


def _load_id():
    # No foreign key (as xmatch): its per-row trigger cost more than the rest of the COPY; rows are
    # deleted by load_id when their file is replaced (xpmet.etl.provenance).
    return sa.Column("load_id", sa.Integer, nullable=False, comment="the etl_load row of the file")


def _mags(*names):
    return [sa.Column(n, REAL) for n in names]


photometry_tmass = sa.Table(
    "photometry_tmass", metadata,
    sa.Column("designation", sa.Text, primary_key=True, comment="2MASS PSC designation, e.g. 05351230-0525270"),
    sa.Column("ra", DOUBLE_PRECISION, nullable=False), sa.Column("dec", DOUBLE_PRECISION, nullable=False),
    *_mags("j_m", "j_msigcom", "h_m", "h_msigcom", "ks_m", "ks_msigcom"),
    sa.Column("ph_qual", sa.Text, comment="photometric quality per band (J, H, Ks): A..F, U, X"),
    sa.Column("cc_flg", sa.Text, comment="artefact contamination and confusion per band; 0 = clean"),
    _load_id(),
    comment="2MASS All-Sky Point Source Catalog rows (Skrutskie et al. 2006); positions at the 2MASS epoch",
)

photometry_allwise = sa.Table(
    "photometry_allwise", metadata,
    sa.Column("designation", sa.Text, primary_key=True, comment="AllWISE designation without the J, e.g. 053512.30-052527.0"),
    sa.Column("ra", DOUBLE_PRECISION, nullable=False), sa.Column("dec", DOUBLE_PRECISION, nullable=False),
    *_mags("w1mpro", "w1sigmpro", "w2mpro", "w2sigmpro"),
    sa.Column("ph_qual", sa.Text, comment="photometric quality per band (W1..W4): A, B, C, U, X, Z"),
    sa.Column("cc_flags", sa.Text, comment="contamination and confusion per band (W1..W4); 0 = clean"),
    _load_id(),
    comment="AllWISE Source Catalog rows (Cutri et al. 2013); profile-fit (mpro) Vega magnitudes",
)


def _best_neighbour(name, oid, oid_type, catalogue):
    return sa.Table(
        name, metadata,
        sa.Column("source_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("original_ext_source_id", sa.Text, nullable=False,
                  comment=f"{catalogue} designation (normalised like the catalogue table's)"),
        sa.Column("angular_distance", REAL, comment="arcsec between the Gaia source and its best neighbour"),
        sa.Column("xm_flag", sa.SmallInteger, comment="Gaia cross-match algorithm flag (bitmask)"),
        sa.Column(oid, oid_type, comment="the Gaia archive's numeric id of the external source"),
        sa.Column("number_of_neighbours", sa.Integer, comment="good neighbours of the Gaia source"),
        sa.Column("number_of_mates", sa.SmallInteger,
                  comment="other Gaia sources with the same best neighbour (> 0: blended photometry)"),
        _load_id(),
        sa.Index(f"ix_{name}_ext", "original_ext_source_id"),
        comment=f"Gaia DR3 {name} (archive table gaiadr3.{name.replace('tmass_', 'tmass_psc_xsc_')})",
    )


tmass_best_neighbour = _best_neighbour("tmass_best_neighbour", "clean_tmass_psc_xsc_oid", sa.Integer, "2MASS PSC")
allwise_best_neighbour = _best_neighbour("allwise_best_neighbour", "allwise_oid", sa.BigInteger, "AllWISE")

Q3C_TABLES = ("photometry_tmass", "photometry_allwise")

_DOC = {
    photometry_tmass: {"ra": ("deg", "pos.eq.ra;meta.main"), "dec": ("deg", "pos.eq.dec;meta.main"),
                       "j_m": ("mag", "phot.mag;em.IR.J"), "j_msigcom": ("mag", "stat.error;phot.mag;em.IR.J"),
                       "h_m": ("mag", "phot.mag;em.IR.H"), "h_msigcom": ("mag", "stat.error;phot.mag;em.IR.H"),
                       "ks_m": ("mag", "phot.mag;em.IR.K"), "ks_msigcom": ("mag", "stat.error;phot.mag;em.IR.K")},
    photometry_allwise: {"ra": ("deg", "pos.eq.ra;meta.main"), "dec": ("deg", "pos.eq.dec;meta.main"),
                         "w1mpro": ("mag", "phot.mag;em.IR.3-4um"),
                         "w1sigmpro": ("mag", "stat.error;phot.mag;em.IR.3-4um"),
                         "w2mpro": ("mag", "phot.mag;em.IR.4-8um"),
                         "w2sigmpro": ("mag", "stat.error;phot.mag;em.IR.4-8um")},
}
for _table, _cols in _DOC.items():
    for _name, (_unit, _ucd) in _cols.items():
        _table.c[_name].info.update(unit=_unit, ucd=_ucd)
