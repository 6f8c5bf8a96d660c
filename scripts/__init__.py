"""Sample-data builders and CI helpers; run from the repository's folder as ``python -m scripts.<name>``.

- ``make_sample_data.py``: regenerates sample_data/ (or another federation) from MNIST
- ``check_outputs.py``: checks a finished run's output folders (used by CI's container run)
- ``page_screenshot.py``: the README's screenshots of the live page; ``browser.py``: headless Chromium
  for them and for the page's tests
- ``docker-ci.sh``, ``container-federation-check.sh``: the CI image and its federation in containers
- ``devdata/``: what only these scripts and bench/ use
"""
