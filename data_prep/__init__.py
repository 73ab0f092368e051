"""Converters from the public datasets in ``../shared/datasets`` to mmmatch catalogues.

Not part of the installed package: benchmarks import these from the repository root.
"""
