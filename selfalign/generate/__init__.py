"""Sampling: the Generator protocol, the hf and vLLM backends (found through a registry), resumable shards, the cache."""
