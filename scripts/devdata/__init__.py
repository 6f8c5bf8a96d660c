"""What only the sample-data builders (``scripts/``) and the benchmarks (``bench/``) use; the app
never imports it.

- ``idx.py``: reading MNIST's IDX files (gzipped or not), and where they are looked for
- ``partition.py``: splitting a dataset over sites, IID or label-skewed (Dirichlet)
- ``args.py``: command-line argument types
"""
