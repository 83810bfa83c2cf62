"""Training utilities: evaluation metrics (`esr_tf.training.metrics`) and plots
(`esr_tf.training.plots`).

Submodules are imported explicitly (`from esr_tf.training.metrics import evaluation_report`) so
that `import esr_tf.training` stays cheap.
"""
