"""Foundations every layer stands on: seeding, run folders, environment capture, the metrics/claims contract, frozen configs."""
