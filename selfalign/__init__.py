"""Notebook-first reproductions of LLM self-alignment: DPO, DLMA, ALMoST, Self-Contrast and SALMON, from a CPU miniature world to paper scale

Modules:

- `selfalign.cli`: The `selfalign` command: run paper reproductions with papermill."""

__version__ = "0.1.0"
