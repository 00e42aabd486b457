"""Evaluation protocols shared by every method: retrieval, linear probe, fine-tune, kNN, probes."""
