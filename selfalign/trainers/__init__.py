"""Training stages: SFT and reward over TRL, preference (DPO family), multi-negative."""
