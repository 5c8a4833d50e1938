"""xpmet.flags is the one home of every bitmask; the SQL views take their bit values from it."""
from __future__ import annotations

import re
from importlib.resources import files

import pytest

from xpmet import flags


def test_families_have_unique_bits_that_fit_an_int4():
    for name, bits in flags.FAMILIES.items():
        assert len(set(bits.values())) == len(bits), name
        assert all(0 <= b < 31 for b in bits.values()), name
    assert set(flags.SURVEY_ROW_BITS) <= set(flags.SURVEY_QUALITY_BITS)


def test_render_sql_fills_bits_and_masks_and_refuses_unknown_names():
    assert flags.render_sql("x >> {{bit:survey_quality.feh_flagged}}") == "x >> 10"
    assert flags.render_sql("f & {{mask:label.feh_discordant|ambiguous_match|duplicate_claim}}") == "f & 196"
    with pytest.raises(KeyError):
        flags.render_sql("{{bit:label.no_such_bit}}")
    with pytest.raises(ValueError):
        flags.render_sql("{{ something else }}")
    assert flags.decode(flags.LABEL_BITS, 196) == ["feh_discordant", "ambiguous_match", "duplicate_claim"]


def test_shipped_sql_spells_no_bit_number():
    """Every shipped SQL file renders, and no flag column is tested against a literal number."""
    literal = re.compile(r"(flags\s*(&|>>)\s*\(?\s*\d)|(THEN\s+(1|2|4|8|16|32|64|128|256|512)\s+ELSE)")
    sql = [p for p in files("xpmet.sql").iterdir() if p.name.endswith(".sql")]
    assert sql
    for p in sql:
        text = p.read_text()
        flags.render_sql(text)
        assert not literal.search(text), f"{p.name}: a bit number is spelt out; use {{{{bit:...}}}} / {{{{mask:...}}}}"


def test_label_view_uses_the_rendered_masks(engine):
    """The view in the database carries the values of xpmet.flags (not stale literals)."""
    import sqlalchemy as sa
    with engine.connect() as c:
        d = c.execute(sa.text("SELECT pg_get_viewdef('xpmet.training_set'::regclass)")).scalar()
    want = flags.mask(flags.LABEL_BITS, "feh_discordant", "ambiguous_match", "duplicate_claim")
    assert f"label_flags & {want}" in d
