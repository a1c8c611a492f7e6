"""Training core: config schema, optimizers, sharding, steps, checkpoints, the loop.

Imports no TensorFlow: the input pipeline (vision.data) is imported lazily by
the loop, so accelerator hosts without TF can still build states and steps.
"""
