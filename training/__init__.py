"""Training side of ichseg: data (real loaders and a synthetic generator), models, losses, train loops.

Modules here that need TensorFlow import it themselves; ``synthetic`` and ``datasets`` are plain
numpy so they can be tested and reused without a GPU stack.
"""
