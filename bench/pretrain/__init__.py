"""Pre-training of backbones on fractal images: `bench pretrain` and its building blocks.

A run trains a timm classification model with Lightning on a fractal recipe (rendered on the fly)
or on an ImageFolder tree. It writes `last.ckpt` for resuming, exports the backbone with its
metadata to `backbone.pth` and registers it in the weights table.
"""
