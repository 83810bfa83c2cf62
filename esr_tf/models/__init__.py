"""Models of esr_tf: backbones, fusion and the relevance model."""
