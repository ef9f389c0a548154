"""Judges: the Judge protocol, the refusal proxy, reward models, the self-judge and DLMA's self-reward, embeddings."""
