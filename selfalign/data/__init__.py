"""Records and their validation, JSONL, chat templates, and the corpora (hub datasets and vendored prompt sets)."""
