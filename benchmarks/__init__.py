"""Benchmarks of comptlib; run each as a module from the repository root (see its docstring)."""
