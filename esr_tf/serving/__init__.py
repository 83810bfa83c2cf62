"""Client-side helpers for the exported esr_tf model served by TF Serving (REST and gRPC)."""

from esr_tf.serving.requests import (
    MAX_WARMUP_RECORDS,
    WARMUP_FILE_NAME,
    grpc_predict_request,
    parse_grpc_response,
    parse_rest_response,
    rest_predict_body,
    rest_predict_url,
    warmup_records,
    write_warmup_file,
)

__all__ = [
    "MAX_WARMUP_RECORDS",
    "WARMUP_FILE_NAME",
    "grpc_predict_request",
    "parse_grpc_response",
    "parse_rest_response",
    "rest_predict_body",
    "rest_predict_url",
    "warmup_records",
    "write_warmup_file",
]
