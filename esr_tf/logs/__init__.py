"""Search logs as training signal (#32): the log format, a click simulator, position bias.

- `read`: impressions (CSV / JSONL / Parquet) read streamed and checked, folded into counts;
- `simulate`: `esr-tf simulate-logs`, logs from a judged catalogue with known propensities;
- `propensity`: the position-based click model fitted by EM;
- `cli`: `esr-tf simulate-logs` and `esr-tf logs`.
"""
