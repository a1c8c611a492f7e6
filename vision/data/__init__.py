"""Input pipelines (tf.data + tfds). The only part of the library that imports TensorFlow."""
