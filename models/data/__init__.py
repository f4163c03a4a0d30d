"""Corpus synthesis, manifests, task sets and training data loading."""
