"""Batch normalization whose training step runs as TensorFlow's fused kernel.

Keras 3 computes ``BatchNormalization`` in training from separate ops (moments, then
``tf.nn.batch_normalization``), upcasting bfloat16/float16 inputs to float32 first. On
the CPU those element-wise ops, their gradients and the casts cost more than the
convolutions of a small network (ResNet-56: about half of a training step in
``mixed_bfloat16``). :class:`BatchNormalization` here is the same layer (same weights,
config and inference path) whose training-mode forward pass is one ``FusedBatchNormV3``
op, taking bfloat16/float16 inputs directly, with its fused gradient.
``tools/bench_train_speed.py`` measures the difference.

The class keeps Keras's name on purpose: Keras weights files (``.weights.h5``) address a
layer by its class name, so checkpoints move between the two classes in both directions
(the shipped baselines were trained with Keras's layer). It is registered as
``pn_tf>BatchNormalization`` for ``.keras`` files.

Semantics are Keras's, exactly: normalization by the biased batch variance, moving
statistics updated as ``moving = moving * momentum + batch * (1 - momentum)`` with the
biased variance (the fused kernel reports the unbiased one; it is rescaled). Inference,
masks, ``synchronized=True``, ``renorm`` and any axis other than the last of a 4-D input
take Keras's own path, so exported SavedModel/TFLite graphs do not change. The one
difference: the fused kernel's epsilon is at least 1.001e-5 (cuDNN refuses smaller ones, as
TensorFlow's own ``fused_batch_norm`` notes), so the zoo's 1e-5 becomes 1.001e-5 in training
steps only, a relative change of 1e-8 for unit variance.

bfloat16 inputs go to the kernel directly only where one is registered for them (GPUs, and
CPUs whose oneDNN build has bfloat16 kernels, i.e. AVX512 ones); elsewhere the layer casts
them to float32 around the fused op (:func:`fused_bfloat16_supported` probes once). Layers
whose moving statistics are not float32 (a pure ``"bfloat16"`` policy) take Keras's path.
"""

import functools

import keras

_MIN_EPSILON = 1.001e-5  # cuDNN's CUDNN_BN_MIN_EPSILON is 1e-5; TensorFlow keeps a margin


@functools.cache
def fused_bfloat16_supported():
    """Whether ``FusedBatchNormV3`` runs on bfloat16 inputs on this machine's default device.

    TensorFlow's own CPU kernel has no bfloat16 version; oneDNN adds one on AVX512 CPUs, and
    GPUs have one. Probed once, eagerly, on a tiny tensor.
    """
    import tensorflow as tf

    with tf.init_scope():
        try:
            tf.raw_ops.FusedBatchNormV3(
                x=tf.zeros([2, 1, 1, 2], tf.bfloat16), scale=tf.ones([2]), offset=tf.zeros([2]),
                mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
                epsilon=_MIN_EPSILON, data_format="NHWC", is_training=True)
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
                tf.errors.UnimplementedError):
            return False
    return True


@keras.saving.register_keras_serializable(package="pn_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused training step (TensorFlow backend).

    Takes exactly ``BatchNormalization``'s arguments; ``isinstance(layer,
    keras.layers.BatchNormalization)`` holds, so the channel-graph engine treats it alike.
    """

    def _fusable(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "bfloat16", "float16")
            and keras.backend.standardize_dtype(self.moving_mean.dtype) == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        ones, zeros = tf.ones([channels], tf.float32), tf.zeros([channels], tf.float32)
        # Keras creates BN variables with autocast=False: they stay float32 under mixed policies.
        scale = tf.cast(self.gamma, tf.float32) if self.scale else ones
        offset = tf.cast(self.beta, tf.float32) if self.center else zeros
        x = inputs
        if x.dtype == tf.bfloat16 and not fused_bfloat16_supported():
            x = tf.cast(x, tf.float32)  # no bfloat16 kernel here (e.g. a CPU without AVX512)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32), epsilon=max(self.epsilon, _MIN_EPSILON),
            data_format="NHWC", is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = variance * tf.maximum(count - 1.0, 0.0) / count  # unbiased -> biased
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)
