"""Timing helpers for `esr_tf.bench`: the machine, its matmul peak, call timers, step timers.

Example:
>>> times = time_calls(lambda: sum(range(1000)), repeats=5)
>>> len(times), summarize(times)["n"]
(5, 5)
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from esr_tf.models.precision import cpu_flags


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """CPU model, cores, load and library versions, stored in bench.json with the figures."""
    import keras_hub

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "avx512f": "avx512f" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "load_average_start": load_average(),
    }


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict:
    """p50 / p99 / mean / best of a list of seconds, in milliseconds."""
    a = np.asarray(times, np.float64) * 1e3
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "best_ms": float(a.min()),
    }


def matmul_peak(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5) -> dict:
    """Best float32 `tf.matmul` FLOP/s per size (2 n^3 FLOPs per product), and their maximum.

    The product is reduced inside the `tf.function` so that only a scalar leaves the graph
    (no 64 MB device-to-host copy in the timing).
    """

    @tf.function
    def product(a, b):
        return tf.reduce_sum(tf.matmul(a, b))

    result: dict = {"per_size_gflops": {}}
    for n in sizes:
        a = tf.random.normal((n, n), seed=1)
        b = tf.random.normal((n, n), seed=2)
        times = time_calls(lambda a=a, b=b: product(a, b).numpy(), repeats=repeats, warmup=1)
        result["per_size_gflops"][str(n)] = 2.0 * n**3 / min(times) / 1e9
    result["peak_flops"] = max(result["per_size_gflops"].values()) * 1e9
    return result


class StepTimer(keras.callbacks.Callback):
    """Records the wall time at the end of every training batch (first steps hold tracing)."""

    def __init__(self) -> None:
        super().__init__()
        self.start = 0.0
        self.ends: list[float] = []

    def on_train_begin(self, logs=None) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.ends.append(time.perf_counter())

    def steps_per_second(self, skip: int) -> float:
        """Steps per second over the batches after the first `skip` (at least one kept)."""
        skip = min(skip, len(self.ends) - 2)
        if skip < 0:
            raise RuntimeError("StepTimer: fewer than 2 training steps were recorded")
        timed = self.ends[skip:]
        return (len(timed) - 1) / (timed[-1] - timed[0])

    def first_step_seconds(self) -> float:
        return self.ends[0] - self.start if self.ends else float("nan")


def forward_ms_per_example(fn, inputs, repeats: int) -> float:
    """Best-of-`repeats` ms per example of `fn(inputs)` inside a tf.function."""
    graph = tf.function(lambda x: fn(x, training=False))
    batch = int(tf.nest.flatten(inputs)[0].shape[0])
    graph(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), graph(inputs))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times) / batch


def text_inputs(batch: int, length: int, vocab: int) -> dict[str, tf.Tensor]:
    # Ids above the special tokens; the values do not change the speed.
    low = min(1000, vocab // 2)
    ids = tf.random.stateless_uniform((batch, length), (1, 2), low, vocab, tf.int32)
    return {
        "token_ids": ids,
        "segment_ids": tf.zeros((batch, length), tf.int32),
        "padding_mask": tf.ones((batch, length), tf.int32),
    }


class StageClock:
    """Wall and CPU seconds and the load average per stage, stored in bench.json.

    CPU seconds (this process, all threads; child processes such as the C++ client excluded)
    say how much work a stage is whatever else the shared machine is doing.
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.loads: dict[str, list[float] | None] = {"start": load_average()}
        self._name: str | None = None
        self._start, self._cpu = self.t0, time.process_time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def stage(self, name: str | None) -> None:
        """Ends the current stage and starts `name` (None: just end)."""
        now, cpu = time.perf_counter(), time.process_time()
        if self._name is not None:
            self.seconds[self._name] = round(now - self._start, 2)
            self.cpu_seconds[self._name] = round(cpu - self._cpu, 2)
            self.loads[self._name] = load_average()
        self._name, self._start, self._cpu = name, now, cpu
        if name is not None:
            print(f"[bench {self.elapsed():6.1f} s] {name}", flush=True)
