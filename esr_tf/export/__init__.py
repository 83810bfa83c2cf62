"""Exporting the model as a SavedModel with raw-string / image-bytes signatures, and checking it.

`esr_tf.export.archive` writes every SavedModel (relevance and search index) so that TF Serving's
C++ loader restores what its signatures read. `esr_tf.export.cpp_client` builds and runs a small
C++ program that loads the SavedModel with `tensorflow::LoadSavedModel`, the loader TF Serving
itself uses; `esr_tf.export.cpp_verify` runs every signature through it for `verify`.
"""
