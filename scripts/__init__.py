"""Sample-data builders and CI helpers; run from the repository's folder as ``python -m scripts.<name>``."""
