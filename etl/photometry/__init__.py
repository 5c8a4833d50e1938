"""Photometry descriptors (one TOML per catalogue or best-neighbour file kind), shipped as xpmet.photometry_descriptors."""
