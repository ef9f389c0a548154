"""Notebook-first reproductions of LLM self-alignment: DPO, DLMA, ALMoST, Self-Contrast and SALMON, from a CPU miniature world to paper scale

Modules:

- `selfalign.bands.almost`: ALMoST (Kim et al., 2023, "Aligning Large Language Models through Synthetic Feedback", arXiv:2305.13735; `naver-ai/ALMoST`): preferences without human labels, from a rule of thumb about prompted configurations — a larger model beats a smaller one, more demonstrations beat fewer, better demonstrations beat worse — filtered by a length heuristic; a reward model trained on them; RM-guided self-play for demonstrations; RL from the synthetic reward.
- `selfalign.bands.base`: What every paper band shares: `BandConfig` (one name per setting across all bands) with a `TrainSpec` per trained row, the prompt sources and judges a config names, the policy loader, and the one driver that runs any `Band` — build data, train each row into its own checkpoint, evaluate rows one at a time, state the claims.
- `selfalign.bands.self_contrast`: Self-Contrast (THUDM): sample many responses from the SFT model, embed them, keep as negatives those least like the SFT target, and train DPO with one target against k negatives. The band reproduces the paper's figure — win rate against the SFT target as the number of negatives grows — with SFT, DPO_std and SPIN as baselines, and the filter ablation.
- `selfalign.cli`: The `selfalign` command: run paper reproductions with papermill.
- `selfalign.judges.base`: The `Judge` protocol every band evaluates and labels with: a scalar per (prompt, response), a tie threshold, a name the tables and claims print, and per-aspect rates. The world's oracle, the refusal proxy and trained reward models all implement it, so a band receives its judge as an object and never branches on which one it has.
- `selfalign.judges.proxy`: Named proxies for where there is no oracle (`small` scale): a refusal detector, a degeneration check, and a graded refusal-and-topicality score, as a `Judge`. They measure refusal and topicality, not correctness, and say so.
- `selfalign.objectives.ppo`: PPO's objectives as pure tensor functions over a batch of right-padded responses: per-token rewards with the KL penalty, generalised advantage estimation, the clipped policy and value losses, whitening.
- `selfalign.report`: The report of a `selfalign reproduce` run: `REPORT.md` and `report.html` in the output folder.
- `selfalign.trainers.launch`: Every training stage as a process: one JSON job per stage, run in this process or under `accelerate launch` on DDP, DeepSpeed ZeRO-2/3 or FSDP2, with each rank's log kept in the stage folder and a killed run resumed from its last checkpoint.
- `selfalign.trainers.multineg`: Self-Contrast's training: one SFT target against many self-generated negatives. Two trainers optimise the same objective — the paper's pair expansion with a prompt-grouped sampler, and a multi-negative batch that computes the chosen sequence once.
- `selfalign.trainers.ppo`: Our own PPO for language models: rollouts through the `Generator` protocol, per-token KL-penalised rewards, GAE, k epochs of clipped policy and value updates, a critic initialised from the reward model, checkpoint and resume."""

__version__ = "0.1.0"
