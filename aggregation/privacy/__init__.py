"""Differential privacy for the aggregate: clipping, calibrated noise, sensitivity, accounting."""
