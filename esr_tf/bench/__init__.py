"""Benchmarks of esr_tf on the machine at hand (`esr-tf bench`).

`esr_tf.bench.run.run_benchmarks(out_dir)` measures, in one process and one run (the machine
may be shared, so figures are reported as ratios of numbers measured side by side): the tf.data
input pipeline, training speed and FLOP utilisation against this machine's matmul peak, the
exported SavedModel's serving latency and overhead, re-ranking with cached image features, and
the C++ `LoadSavedModel` client. It writes `bench.json` and `bench.md` into `out_dir`.

Example:
>>> from esr_tf.bench.run import run_benchmarks
>>> result = run_benchmarks("esr_bench", quick=True)  # doctest: +SKIP
>>> result["figures"]["serving_overhead_b1"]["met"]  # doctest: +SKIP
True
"""
