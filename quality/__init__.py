"""Quality tooling: `triage evaluate` on labelled data (retrieval and pair sets).

Needs the `quality` extra (bm25s); the worker itself never imports this package.
"""
