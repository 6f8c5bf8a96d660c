"""The knowledge-distillation core: plain PyTorch, importing nothing from FeatureCloud.

One site's work, readable and testable without any federation:

- settings and inputs: ``config`` (config.yml: every key, default and rule), ``early_start`` (the
  input read, and a frozen teacher run, before the controller names the site), ``data`` (datasets to
  tensors, checked; batches scaled and normalized), ``images`` (image files decoded), ``numpy_files``
  (every ``np.load``; FeatureCloud's array layouts), ``model_files`` (class ``Model`` from the user's
  .py files), ``weights`` (safe weight loading), ``torch_files`` (every ``torch.load`` and its trust
  policy), ``model_checks`` (one batch through both models before training), ``errors`` (user
  mistakes as ``KDError`` messages)
- training: ``losses``, ``training`` (local epochs, teacher logits, evaluation, learning-rate
  schedule), ``normalization`` (mean/std per channel), ``process_wide`` (what sites sharing one
  process take turns with: torch's global generator, imports, exports)
- federation: ``agreement`` (classes and channels the sites agree on), ``aggregation`` (FedAvg),
  ``server_optimizer`` (the coordinator's step over rounds), ``transport`` (plain, SMPC and DP wire
  forms), ``site`` (one site: everything it computes, nothing it communicates), ``folds`` (one site's
  cross-validation folds, trained in the same rounds), ``federation`` (``federate``: the whole
  algorithm in one process, for benchmarks and tests)
- outputs: ``checkpoint`` (per-round checkpoints), ``results`` (every output from one metrics
  dict), ``files`` (atomic writes, output names, publishing), ``exports`` (TorchScript, ONNX),
  ``quantization`` (the int8 student), ``plots``, ``event_logs`` (TensorBoard), ``report``
  (report.md, the summary table), ``cv_summary`` (the folds' summary), ``profile`` (size, latency,
  memory)
- ``api``: ``distill()`` in a script

The FeatureCloud states (``states/``) drive a site through the engine, ``web/`` shows its
progress, ``testbed/`` plays the controller; none of them is imported here.
"""
