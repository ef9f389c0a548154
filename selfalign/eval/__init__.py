"""Evaluation: sampling policies, KL on samples, win rates with CIs, best-of-N."""
