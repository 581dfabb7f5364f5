"""A weight of its own, as a layer output: how an unrolled layer's weights stay weights.

A user's layer may use a weight it holds directly in ``keras.ops`` (a class token
concatenated to the tokens, position embeddings added, a layer scale ``x * self.gamma``).
When pn-tf unrolls such a layer into the functional graph (:mod:`pn_tf.graph.replay`), each
such weight becomes a :class:`Parameter`: a layer holding the same variable that outputs
it. The graph then calls it like any layer, so the weight stays a (trainable) weight of the
flat model, the channel analysis sees its last axis as channels, and extraction slices it
on the channels kept, as it slices a bias.
"""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="pn_tf")
class Parameter(keras.layers.Layer):
    """Outputs a weight it holds, of fixed ``shape``.

    Args:
        shape: the weight's shape.
        batched: the weight's first axis (of size 1) stands for the batch: the output
            repeats it to the batch of the input, which is otherwise only used for that
            (a class token of shape (1, 1, C) becomes (batch, 1, C)).
        initializer: the initial value where the weight is not set otherwise.
        value_dtype: the weight's dtype (an integer one for indices: not trainable).

    The layer is called on any tensor of the graph (``Parameter(...)(x)``); only ``x``'s
    batch size is read.
    """

    def __init__(self, shape, batched=False, initializer="zeros", value_dtype="float32", **kwargs):
        super().__init__(**kwargs)
        self.shape = tuple(int(d) for d in shape)
        self.value_dtype = keras.backend.standardize_dtype(value_dtype)
        self.batched = bool(batched) and len(self.shape) >= 1 and self.shape[0] == 1
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.value = self.add_weight(shape=self.shape, initializer=self.initializer, name="value",
                                     trainable=self.trainable and "float" in self.value_dtype,
                                     dtype=self.value_dtype)

    def call(self, inputs):
        value = ops.convert_to_tensor(self.value)
        if not self.batched:
            return value
        batch = ops.shape(keras.tree.flatten(inputs)[0])[0]
        return ops.broadcast_to(value, (batch,) + self.shape[1:])

    def compute_output_shape(self, input_shape):
        if not self.batched:
            return self.shape
        first = keras.tree.flatten(input_shape)[0]
        first = first if isinstance(first, (tuple, list)) else input_shape
        return (first[0],) + self.shape[1:]

    def compute_output_spec(self, inputs):
        shape = self.shape
        if self.batched:
            shape = (keras.tree.flatten(inputs)[0].shape[0],) + self.shape[1:]
        return keras.KerasTensor(shape, dtype=self.value_dtype)

    def get_config(self):
        return dict(super().get_config(), shape=list(self.shape), batched=self.batched,
                    value_dtype=self.value_dtype, initializer=keras.initializers.serialize(self.initializer))

    @classmethod
    def holding(cls, value, name, batched=False):
        """A built Parameter outputting ``value``: a variable (which it holds itself, shared with
        the layer it came from) or a constant tensor (held as a non-trainable weight)."""
        shape = tuple(int(d) for d in value.shape)
        dtype = keras.backend.standardize_dtype(value.dtype)
        if isinstance(value, keras.Variable):
            layer = cls(shape, batched=batched, value_dtype=dtype, name=name, trainable=value.trainable)
            layer.value = value  # tracked as this layer's weight: the same variable
            layer.built = True
            return layer
        layer = cls(shape, batched=batched, value_dtype=dtype, name=name, trainable=False)
        layer.build(None)
        layer.value.assign(np.asarray(keras.ops.convert_to_numpy(value)))
        return layer
