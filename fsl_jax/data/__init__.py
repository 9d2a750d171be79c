"""Datasets (tfds builders), few-shot splits, and the stateless episode sampler."""
