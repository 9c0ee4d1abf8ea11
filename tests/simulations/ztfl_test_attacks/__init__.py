"""Attacks a scenario adds by ``module:factory`` path, for the simulation tests."""
