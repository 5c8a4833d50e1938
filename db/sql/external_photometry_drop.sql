DROP VIEW IF EXISTS xpmet.external_photometry;
