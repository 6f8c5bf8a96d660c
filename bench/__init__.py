"""Benchmarks, run from the repository's folder as ``python -m bench.<name>`` (see bench/README.md);
each prints its table and writes it to ``bench/results/``. Speed is reported as ratios measured in
one run, accuracy as what a run ends with.

- ``kd_throughput.py``: distillation epochs with cached teacher logits against the original apps' loop
- ``noniid.py``: label skew, FedAvg against FedProx, against centralized distillation; its helpers
  build the sites the others run (``app.federation.federate``)
- ``privacy.py``: what differential privacy and secure aggregation cost
- ``convergence.py``: the federated KD student against central KD and the no-KD baseline
- ``int8.py``: the int8 student against the float one (size, latency)
- ``augment.py``: student epochs taught from cached teacher views against online teaching
- ``decode.py``: decoding a folder of photos against a plain per-image Pillow loop
- ``quick_start.py``: the README quick start's figures (baseline, use_smpc, 500 images per site)
- ``run_breakdown.py`` (with ``plain_loop.py``), ``containers.py``, ``many_sites.py`` (with
  ``procmem.py``), ``payloads.py``: where a run's time and memory go, containers against local
  processes, many sites, large models' messages
- ``output.py``: every bench's table printed and kept in ``bench/results/``
"""
