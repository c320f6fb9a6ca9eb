"""Deterministic tools on model artifacts."""
