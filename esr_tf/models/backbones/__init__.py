"""Pretrained image and text backbones (import the submodules; nothing heavy is imported here)."""
