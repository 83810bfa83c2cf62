"""Training: the trainer (keras fit), the feature pass, cache and store, metrics, ablations, plots.

Submodules are imported explicitly (`from esr_tf.training.metrics import evaluation_report`) so
that `import esr_tf.training` stays cheap.
"""
