"""External photometry: 2MASS PSC and AllWISE rows, the Gaia DR3 best-neighbour tables, the view external_photometry.

Tables from xpmet/db/models/photometry.py (filled by `xpmet etl photometry`); the view's text lives in
db/sql/external_photometry.sql (dropped by external_photometry_drop.sql). The reader may read all four
tables and the view.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

from xpmet.db.migrate import run_sql_file

PUBLISHED = ("photometry_tmass", "photometry_allwise", "tmass_best_neighbour", "allwise_best_neighbour",
             "external_photometry")


def _best_neighbour(name, oid, oid_type, catalogue, archive):
    op.create_table(name,
    sa.Column('source_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('original_ext_source_id', sa.Text(), nullable=False,
              comment=f"{catalogue} designation (normalised like the catalogue table's)"),
    sa.Column('angular_distance', sa.REAL(), nullable=True,
              comment='arcsec between the Gaia source and its best neighbour'),
    sa.Column('xm_flag', sa.SmallInteger(), nullable=True, comment='Gaia cross-match algorithm flag (bitmask)'),
    sa.Column(oid, oid_type, nullable=True, comment="the Gaia archive's numeric id of the external source"),
    sa.Column('number_of_neighbours', sa.Integer(), nullable=True, comment='good neighbours of the Gaia source'),
    sa.Column('number_of_mates', sa.SmallInteger(), nullable=True,
              comment='other Gaia sources with the same best neighbour (> 0: blended photometry)'),
    sa.Column('load_id', sa.Integer(), nullable=False, comment='the etl_load row of the file'),
    sa.PrimaryKeyConstraint('source_id'),
    schema='xpmet',
    comment=f'Gaia DR3 {name} (archive table gaiadr3.{archive})'
    )
    op.create_index(f'ix_{name}_ext', name, ['original_ext_source_id'], schema='xpmet')


def upgrade():
    op.create_table('photometry_tmass',
    sa.Column('designation', sa.Text(), nullable=False, comment='2MASS PSC designation, e.g. 05351230-0525270'),
    sa.Column('ra', postgresql.DOUBLE_PRECISION(), nullable=False),
    sa.Column('dec', postgresql.DOUBLE_PRECISION(), nullable=False),
    *[sa.Column(c, sa.REAL(), nullable=True) for c in ('j_m', 'j_msigcom', 'h_m', 'h_msigcom', 'ks_m', 'ks_msigcom')],
    sa.Column('ph_qual', sa.Text(), nullable=True, comment='photometric quality per band (J, H, Ks): A..F, U, X'),
    sa.Column('cc_flg', sa.Text(), nullable=True, comment='artefact contamination and confusion per band; 0 = clean'),
    sa.Column('load_id', sa.Integer(), nullable=False, comment='the etl_load row of the file'),
    sa.PrimaryKeyConstraint('designation'),
    schema='xpmet',
    comment='2MASS All-Sky Point Source Catalog rows (Skrutskie et al. 2006); positions at the 2MASS epoch'
    )
    op.create_table('photometry_allwise',
    sa.Column('designation', sa.Text(), nullable=False,
              comment='AllWISE designation without the J, e.g. 053512.30-052527.0'),
    sa.Column('ra', postgresql.DOUBLE_PRECISION(), nullable=False),
    sa.Column('dec', postgresql.DOUBLE_PRECISION(), nullable=False),
    *[sa.Column(c, sa.REAL(), nullable=True) for c in ('w1mpro', 'w1sigmpro', 'w2mpro', 'w2sigmpro')],
    sa.Column('ph_qual', sa.Text(), nullable=True, comment='photometric quality per band (W1..W4): A, B, C, U, X, Z'),
    sa.Column('cc_flags', sa.Text(), nullable=True, comment='contamination and confusion per band (W1..W4); 0 = clean'),
    sa.Column('load_id', sa.Integer(), nullable=False, comment='the etl_load row of the file'),
    sa.PrimaryKeyConstraint('designation'),
    schema='xpmet',
    comment='AllWISE Source Catalog rows (Cutri et al. 2013); profile-fit (mpro) Vega magnitudes'
    )
    for t in ("photometry_tmass", "photometry_allwise"):
        op.execute(f"CREATE INDEX ix_{t}_q3c ON xpmet.{t} (q3c_ang2ipix(ra, dec))")
    _best_neighbour('tmass_best_neighbour', 'clean_tmass_psc_xsc_oid', sa.Integer(), '2MASS PSC',
                    'tmass_psc_xsc_best_neighbour')
    _best_neighbour('allwise_best_neighbour', 'allwise_oid', sa.BigInteger(), 'AllWISE', 'allwise_best_neighbour')
    run_sql_file("external_photometry.sql")
    op.execute("DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xpmet_reader') THEN "
               f"GRANT SELECT ON {', '.join('xpmet.' + t for t in PUBLISHED)} TO xpmet_reader; END IF; END $$")


def downgrade():
    run_sql_file("external_photometry_drop.sql")
    for t in ("allwise_best_neighbour", "tmass_best_neighbour", "photometry_allwise", "photometry_tmass"):
        op.drop_table(t, schema='xpmet')
