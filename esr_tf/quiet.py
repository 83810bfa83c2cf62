"""A quiet TensorFlow start-up for the command line, and Keras progress that suits a log file.

TensorFlow prints start-up chatter to stderr: oneDNN and CUDA notices, `cpu_feature_guard`
and absl's "All log messages before absl::InitializeLog() ..." lines. Most of it is written by
C++ before absl logging is initialised, which `TF_CPP_MIN_LOG_LEVEL` does not reach (TF 2.21),
so `quiet_tensorflow` also imports TensorFlow (and lists its devices, where the CUDA probe
speaks) with file descriptor 2 pointed at a temporary file, then replays whatever was not
chatter. Nothing is hidden with `--verbose`, `ESR_TF_VERBOSE=1`, or a `TF_CPP_MIN_LOG_LEVEL`
of the user's own.

Example:
>>> is_chatter("I0000 00:00:1796119705.482684   14935 port.cc:153] oneDNN custom operations are on.")
True
>>> is_chatter("UserWarning: something real")
False
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

VERBOSE_ENV = "ESR_TF_VERBOSE"

_CHATTER = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"  # absl / glog-format C++ lines
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .*rebuild TensorFlow"
    r")"
)


def is_chatter(line: str) -> bool:
    """Whether a stderr line is TensorFlow start-up chatter (absl-format C++ log lines)."""
    return bool(_CHATTER.match(line))


def wants_verbose(flag: bool = False) -> bool:
    """`--verbose`, `ESR_TF_VERBOSE=1`, or the user's own `TF_CPP_MIN_LOG_LEVEL`."""
    env = os.environ.get(VERBOSE_ENV, "").strip().lower()
    return flag or env in ("1", "true", "yes", "on") or "TF_CPP_MIN_LOG_LEVEL" in os.environ


def quiet_tensorflow(verbose: bool = False) -> None:
    """Imports TensorFlow without its start-up chatter (a no-op when verbose or imported)."""
    if wants_verbose(verbose) or "tensorflow" in sys.modules:
        return
    # 3: C++ ERROR lines too, once absl logging is up: libjpeg's "Premature end of JPEG data"
    # beside the InvalidArgumentError a truncated photo raises anyway, the oneDNN DT_INT64
    # notice on CPUs without AVX-512 (#33). Also quiets child processes (verify).
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe logs here, not at import
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines() if line.strip() and not is_chatter(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")


def fit_verbose() -> int:
    """Keras `verbose` for `fit`: a progress bar on a terminal, one line per epoch otherwise
    (CI, `> log`), instead of thousands of carriage-return updates."""
    try:
        return 1 if sys.stdout.isatty() else 2
    except (AttributeError, ValueError):  # replaced or closed stdout
        return 2
