"""Benchmarks: python -m fastgan bench (cli.py), cases shared with bench/ (cases.py)."""
