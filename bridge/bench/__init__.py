"""Benchmarks, in one place, on one workload definition (``workloads``).

  workloads    mlp_infer, cnn_infer, mlp_train: the shapes CrypTen's anchor runs
  plaintext    the same workloads in float32 torch (the ratio's denominator)
  inference    embedded serving rows, and a stream of batches
  training     the mlp_train epoch, embedded
  distributed  one process per party on loopback (``python -m bridge.bench.distributed``)
  federated    FedAvg vs the same local training (a Keras workload)
  kernels      which exact matmul path each backend chose on this host
  suite        ``privacy-bridge bench``: all of the above, table by table
  report       text tables and JSON lines

Figures are printed and kept in the README; tests assert only exact counts
(``tests/*/test_bench.py``).
"""
