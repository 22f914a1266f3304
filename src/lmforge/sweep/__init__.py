"""Hyper-parameter sweeps: many trials of one training step, tracked, and the best one kept."""
