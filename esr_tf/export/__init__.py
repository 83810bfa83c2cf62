"""Exporting the model as a SavedModel with raw-string / image-bytes signatures, and checking it.

`esr_tf.export.cpp_client` builds and runs a small C++ program that loads the SavedModel with
`tensorflow::LoadSavedModel`, the loader TF Serving itself uses.
"""
