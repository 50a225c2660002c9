"""Drift detection: the statistics engine shared by the local monitor and the Azure monitor (see docs/drift.md)."""
