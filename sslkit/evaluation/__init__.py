"""Evaluation of frozen encoders: features, k-NN, linear probe, clustering, the probe command."""
