"""Runnable examples that use a running nimble server (not part of the installed package).

A regular package (this file) so that `python -m examples.rag` works from the repository root
and `import examples` can never resolve to a same-named folder elsewhere on sys.path.
"""
