"""Survey descriptors (one TOML per catalogue), shipped as xpmet.survey_descriptors."""
