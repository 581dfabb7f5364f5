"""The classification loss of a model whose output is either logits or probabilities.

pn-tf's zoo outputs logits; users' models often end in a softmax. The search, the training
helpers and evaluation read which one a model gives (:func:`outputs_probabilities`) and use
the matching cross-entropy, so a softmax model is pruned and fine-tuned as it is and its
exported files keep the output it had.
"""

import keras


def _producer(tensor):
    return tensor._keras_history[0]


def outputs_probabilities(model):
    """Whether ``model``'s (first) output is a softmax over classes rather than logits."""
    try:
        op = _producer(keras.tree.flatten(model.outputs)[0])
    except (AttributeError, IndexError, ValueError):
        return False
    if isinstance(op, keras.layers.Softmax):
        return True
    if not isinstance(op, keras.layers.Layer):  # a keras.ops call, e.g. keras.ops.softmax(x)
        from pn_tf.graph.rules import keras_op_class

        softmax = keras_op_class("softmax")
        if softmax is not None and isinstance(op, softmax):
            return True
    return getattr(getattr(op, "activation", None), "__name__", "") == "softmax"


def classification_loss(model, label_smoothing=0.0):
    """A Keras loss for integer labels matching ``model``'s output (logits or probabilities)."""
    from_logits = not outputs_probabilities(model)
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)

    def smoothed(y_true, outputs):
        classes = keras.ops.shape(outputs)[-1]
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(one_hot, outputs, from_logits=from_logits,
                                                     label_smoothing=label_smoothing)

    return smoothed
