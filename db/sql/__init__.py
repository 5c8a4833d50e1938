"""SQL files the migrations apply (views, functions, roles), shipped as xpmet.sql."""
