"""Feeding pixels to a trainer: the map-style loader, streaming splits and the one shape bucketer (samplers)."""
