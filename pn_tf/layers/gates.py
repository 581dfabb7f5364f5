"""The channel gate: per-channel logits that scale one prunable channel group.

METHOD.md item 1 (PN, Gao et al. CVPR 2021, following NPPM): each prunable group of
width C holds logits theta (init N(0, 1)). With one Gumbel sample g,

    soft gate  a = sigmoid((theta + g + base) / T)        base = 3.0, T = 0.4
    hard gate  1[a >= 0.5] with a straight-through gradient.

The Gumbel sample lives in a non-trainable ``noise`` variable that the search step
fills before each forward pass (from a stateless, replica-independent seed), so the
exact gate vector the network used can be recomputed outside the network with
:meth:`ChannelGate.soft_values`. With ``noise`` at zero the gate is deterministic.

Gate variables are never autocast: under a mixed dtype policy the gate vector is computed
in float32 and only the product with the (bfloat16/float16) activations is not.

A fifth state, ``mask``, multiplies by a fixed 0/1 vector (the ``mask`` variable);
it is how a chosen sub-network (e.g. the one extraction will keep) is evaluated.
"""

import keras
from keras import ops

GATE_MODES = ("identity", "soft", "hard", "mask")


def gumbel_noise(shape, seed):
    """One Gumbel(0, 1) sample ``-log(-log U)``; ``seed`` is a stateless seed pair."""
    import tensorflow as tf

    u = tf.random.stateless_uniform(shape, seed=seed, minval=1e-6, maxval=1.0 - 1e-6)
    return -tf.math.log(-tf.math.log(u))


def straight_through(hard, soft):
    """Forward ``hard``, gradient of ``soft``."""
    return soft + ops.stop_gradient(hard - soft)


@keras.saving.register_keras_serializable(package="pn_tf")
class ChannelGate(keras.layers.Layer):
    """Multiplies the last (channel) axis by a learnable gate vector.

    Args:
        mode: one of ``"identity"`` (the unpruned network, exactly), ``"soft"``
            (Gumbel-sigmoid relaxation, used during search), ``"hard"``
            (thresholded at 0.5 with a straight-through gradient) or ``"mask"``
            (a fixed 0/1 vector held in the ``mask`` variable).
        base: float. Offset added to the logits so that gates start near "on".
        temperature: float. Sigmoid temperature T.

    Example:

    >>> gate = ChannelGate(mode="identity", name="g0")
    >>> y = gate(keras.ops.ones((1, 4, 4, 8)))
    """

    def __init__(self, mode="identity", base=3.0, temperature=0.4, **kwargs):
        super().__init__(**kwargs)
        if mode not in GATE_MODES:
            raise ValueError(f"ChannelGate mode must be one of {GATE_MODES}, got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"ChannelGate temperature must be > 0, got {temperature}")
        self.mode = mode
        self.base = float(base)
        self.temperature = float(temperature)
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis must be known, got {input_shape}")
        self.channels = int(channels)
        self.logits = self.add_weight(
            name="logits",
            shape=(self.channels,),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            trainable=True,
            autocast=False,
        )
        self.noise = self.add_weight(
            name="noise",
            shape=(self.channels,),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            autocast=False,
        )
        self.mask = self.add_weight(
            name="mask",
            shape=(self.channels,),
            initializer="ones",
            trainable=False,
            aggregation="only_first_replica",
            autocast=False,
        )

    def soft_values(self, noise=None):
        """The relaxed gate ``sigmoid((theta + g + base) / T)``; g defaults to ``noise``."""
        g = self.noise if noise is None else noise
        return ops.sigmoid((self.logits + g + self.base) / self.temperature)

    def hard_values(self, noise=None):
        """``1[soft >= 0.5]`` in the forward pass, the soft gradient backwards."""
        soft = self.soft_values(noise)
        hard = ops.cast(soft >= 0.5, soft.dtype)
        return straight_through(hard, soft)

    def gate_values(self):
        """The vector this gate multiplies by in its current mode (ones for identity)."""
        if self.mode == "soft":
            return self.soft_values()
        if self.mode == "hard":
            return self.hard_values()
        if self.mode == "mask":
            return ops.convert_to_tensor(self.mask)
        return ops.ones((self.channels,), dtype=self.compute_dtype)

    def call(self, inputs):
        if self.mode == "identity":
            return inputs
        return inputs * ops.cast(self.gate_values(), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, base=self.base, temperature=self.temperature)
        return config


def gate_layers(model):
    """All distinct :class:`ChannelGate` layers of ``model``, in graph order."""
    seen, gates = set(), []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, ChannelGate) and id(layer) not in seen:
            seen.add(id(layer))
            gates.append(layer)
    return gates


def set_gate_mode(model, mode):
    """Switches every gate of ``model`` to ``mode`` and drops stale compiled functions.

    A gate's mode is a Python attribute read while tracing, so functions that
    ``fit``/``predict``/``evaluate`` compiled earlier are discarded here.
    """
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode must be one of {GATE_MODES}, got {mode!r}")
    for gate in gate_layers(model):
        gate.mode = mode
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    return model
