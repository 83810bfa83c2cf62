"""Preprocessing shared by training and serving: image decoding, text packing, tf.data."""
