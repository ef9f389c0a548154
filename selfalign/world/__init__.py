"""The miniature world: prompts, behaviours, principles, the oracle, its corpus, model build and report."""
