"""Notebook-first reproductions of LLM self-alignment: DPO, DLMA, ALMoST, Self-Contrast and SALMON, from a CPU miniature world to paper scale

Modules:

- `selfalign.bands.self_contrast`: Self-Contrast (THUDM): sample many responses from the SFT model, embed them, keep as negatives those least like the SFT target, and train DPO with one target against k negatives. The band reproduces the paper's figure — win rate against the SFT target as the number of negatives grows — with SFT, DPO_std and SPIN as baselines, and the filter ablation.
- `selfalign.cli`: The `selfalign` command: run paper reproductions with papermill.
- `selfalign.report`: The report of a `selfalign reproduce` run: `REPORT.md` and `report.html` in the output folder.
- `selfalign.trainers.multineg`: Self-Contrast's training: one SFT target against many self-generated negatives. Two trainers optimise the same objective — the paper's pair expansion with a prompt-grouped sampler, and a multi-negative batch that computes the chosen sequence once."""

__version__ = "0.1.0"
