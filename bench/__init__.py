"""Benchmarks, run from the repository's folder as ``python -m bench.<name>`` (see bench/README.md);
each prints its table and writes it to ``bench/results/``. Speed is reported as ratios measured in
one run, accuracy as what a run ends with.

- ``kd_throughput.py``: distillation epochs with cached teacher logits against the original apps' loop
- ``noniid.py``: label skew, FedAvg against FedProx, against centralized distillation; its helpers
  build the sites the others run (``app.federation.federate``)
- ``privacy.py``: what differential privacy and secure aggregation cost
- ``convergence.py``: the federated KD student against central KD and the no-KD baseline
- ``int8.py``: the int8 student against the float one (size, latency)
"""
