"""Performance prediction networks PN(a): architecture vector -> predicted accuracy.

METHOD.md item 5. Every predictor takes the architecture as a LIST of L tensors
``gates[i]`` of shape (batch, C_i), values in [0, 1] (one per prunable channel group),
and returns the predicted accuracy, shape (batch, 1), in (0, 1). A single concatenated
tensor (batch, sum C_i) is accepted too and split by ``widths``.

* :class:`GRUPredictor` -- the paper's PN, supplement Table 2 exactly:
  per layer ``FC_i(C_i, 16) -> BN -> ReLU``; the L outputs as a sequence into
  ``GRU(16, 16)``; the outputs averaged over the L steps; ``FC(16, 1) -> sigmoid``.
* :class:`BiGRUPredictor` -- the official NPPM code's variant (``PP_Net``): per layer a
  weight-normalised bias-free ``Linear(C_i, 128) -> LayerNorm -> ReLU``, a
  bidirectional GRU with 64 units per direction and its two final states
  concatenated, then a bias-free ``Linear(128, 1) -> sigmoid``.
* :class:`LinearPredictor` -- the supplement's "LR" baseline: one dense layer over the
  concatenation of all gates, then sigmoid. Kind ``"linear_scaled"`` is the same model with
  its input multiplied by ``1 / sqrt(sum C_i)``, which keeps it out of saturation (below).

Keras' ``GRU`` defaults to ``reset_after=True``, which is PyTorch's GRU formulation
(reset gate applied after the recurrent matmul, separate input and recurrent biases),
so a Keras ``GRU(16)`` on 16 inputs has exactly PyTorch ``GRU(16, 16)``'s
3 * (16*16 + 16*16 + 16 + 16) = 1632 parameters (only the gate order, z/r/h vs
r/z/n, and the initialisers differ). ``reset_after=False`` would drop one bias
vector (1584). BatchNormalization uses PyTorch's momentum 0.1 / eps 1e-5.

All models build their variables in ``__init__`` (a call on zeros), so they can be
created under a ``tf.distribute`` strategy scope before the optimizer. The output is
float32 whatever the dtype policy.
"""

import keras
from keras import ops


def _split(x, widths):
    """List input passes through; a concatenated (batch, sum C_i) tensor is split."""
    if isinstance(x, (list, tuple)):
        if len(x) != len(widths):
            raise ValueError(f"expected {len(widths)} gate tensors, got {len(x)}")
        return list(x)
    bounds = [sum(widths[: i + 1]) for i in range(len(widths) - 1)]
    return ops.split(x, bounds, axis=-1)


class _Predictor(keras.Model):
    """Shared plumbing: widths, config, eager build on zeros, float32 output."""

    def __init__(self, widths, **kwargs):
        super().__init__(**kwargs)
        self.widths = [int(w) for w in widths]
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")

    def _build_now(self):
        self([ops.zeros((1, w)) for w in self.widths])

    def get_config(self):
        return {"widths": list(self.widths), "name": self.name}


@keras.saving.register_keras_serializable(package="pn_tf")
class WeightNormDense(keras.layers.Layer):
    """Dense layer with weight normalisation (Salimans & Kingma 2016).

    ``kernel[:, j] = g[j] * v[:, j] / ||v[:, j]||``, as PyTorch's ``weight_norm`` on a
    ``Linear`` (its default ``dim=0``: one scale per output unit). ``v`` starts as
    PyTorch's Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and ``g`` as the column
    norms of ``v``, so the initial kernel equals ``v``.
    """

    def __init__(self, units, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        self.v = self.add_weight(
            name="v",
            shape=(fan_in, self.units),
            initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        )
        self.g = self.add_weight(
            name="g",
            shape=(self.units,),
            initializer=lambda shape, dtype=None: ops.cast(
                ops.sqrt(ops.sum(ops.square(self.v), axis=0)), dtype or "float32"
            ),
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def kernel(self):
        norm = ops.sqrt(ops.sum(ops.square(self.v), axis=0) + 1e-12)
        return self.v * (self.g / norm)

    def call(self, x):
        y = ops.matmul(x, ops.cast(self.kernel(), x.dtype))
        if self.bias is not None:
            y = y + ops.cast(self.bias, x.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="pn_tf")
class GRUPredictor(_Predictor):
    """The paper's PN (supplement Table 2).

    Args:
        widths: list of group widths C_i (L entries).
        hidden: the FC/GRU width (16 in Table 2).

    Parameter count (``count_params``, BN moving statistics included):
    ``sum_i (16 C_i + 16) + L * 4 * 16 + 1632 + 17``; e.g. widths=[16]*27 gives
    7344 + 1728 + 1632 + 17 = 10721 (9857 trainable).
    """

    def __init__(self, widths, hidden=16, **kwargs):
        super().__init__(widths, **kwargs)
        self.hidden = int(hidden)
        n = len(self.widths)
        self.fcs = [keras.layers.Dense(self.hidden, name=f"fc_{i}") for i in range(n)]
        self.bns = [
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn_{i}")
            for i in range(n)
        ]
        self.gru = keras.layers.GRU(self.hidden, return_sequences=True, name="gru")
        self.head = keras.layers.Dense(1, name="head")
        self._build_now()

    def call(self, gates, training=False):
        gates = _split(gates, self.widths)
        steps = [
            ops.relu(bn(fc(ops.cast(a, self.compute_dtype)), training=training))
            for a, fc, bn in zip(gates, self.fcs, self.bns)
        ]
        seq = self.gru(ops.stack(steps, axis=1), training=training)  # (batch, L, hidden)
        out = self.head(ops.mean(seq, axis=1))
        return ops.cast(ops.sigmoid(out), "float32")

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


@keras.saving.register_keras_serializable(package="pn_tf")
class BiGRUPredictor(_Predictor):
    """The official NPPM code's PN (``PP_Net``).

    Args:
        widths: list of group widths C_i.
        hidden: the per-layer embedding width; the bidirectional GRU has
            ``hidden // 2`` units per direction (NPPM: 128 and 64).

    Per layer: weight-normalised bias-free ``Linear(C_i, hidden)`` (``v`` and ``g``),
    ``LayerNormalization`` (eps 1e-5), ReLU. The GRU's final forward state and final
    backward state (the backward pass ends at step 0) are concatenated, as NPPM's
    ``hn``, and a bias-free ``Dense(1)`` with sigmoid gives the prediction.
    """

    def __init__(self, widths, hidden=128, **kwargs):
        super().__init__(widths, **kwargs)
        self.hidden = int(hidden)
        if self.hidden % 2:
            raise ValueError(f"BiGRUPredictor hidden must be even, got {hidden}")
        n = len(self.widths)
        self.fcs = [WeightNormDense(self.hidden, name=f"fc_{i}") for i in range(n)]
        self.lns = [keras.layers.LayerNormalization(epsilon=1e-5, name=f"ln_{i}") for i in range(n)]
        self.bigru = keras.layers.Bidirectional(
            keras.layers.GRU(self.hidden // 2), merge_mode="concat", name="bigru"
        )
        self.head = keras.layers.Dense(1, use_bias=False, name="head")
        self._build_now()

    def call(self, gates, training=False):
        gates = _split(gates, self.widths)
        steps = [
            ops.relu(ln(fc(ops.cast(a, self.compute_dtype))))
            for a, fc, ln in zip(gates, self.fcs, self.lns)
        ]
        final = self.bigru(ops.stack(steps, axis=1), training=training)  # (batch, hidden)
        return ops.cast(ops.sigmoid(self.head(final)), "float32")

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


@keras.saving.register_keras_serializable(package="pn_tf")
class LinearPredictor(_Predictor):
    """The "LR" baseline of the supplement (Fig. 1 left): ``sigmoid(w . concat(a) + b)``.

    NPPM's ``Simple_PN`` omits the bias; a linear regression has one, so we keep it.
    Parameters: ``sum(widths) + 1``.

    ``scale_inputs=True`` multiplies the concatenated gates by ``1 / sqrt(sum(widths))``. The
    model class is unchanged (it is a reparametrisation of ``w``), but the training dynamics
    are not. Adam moves every weight by about its learning rate per step, all in the same
    direction for the open gates. The logit therefore moves by about ``lr * (open gates)`` per
    step: ~0.5 for ResNet-56's 1,008 gates, several units for MobileNetV2's 7,136. Past a
    logit of ~17 the float32 sigmoid is exactly 1 and the L1 loss's gradient is exactly 0,
    so the unscaled model can stay there for good (docs/results.md). Scaling the input
    divides that step by ``sqrt(sum(widths))``.
    """

    def __init__(self, widths, scale_inputs=False, **kwargs):
        super().__init__(widths, **kwargs)
        self.scale_inputs = bool(scale_inputs)
        self.dense = keras.layers.Dense(1, name="dense")
        self._build_now()

    def call(self, gates, training=False):
        parts = [ops.cast(a, self.compute_dtype) for a in _split(gates, self.widths)]
        x = ops.concatenate(parts, axis=-1)
        if self.scale_inputs:
            x = x * (1.0 / sum(self.widths) ** 0.5)
        return ops.cast(ops.sigmoid(self.dense(x)), "float32")

    def get_config(self):
        return {**super().get_config(), "scale_inputs": self.scale_inputs}


# kind -> (class, constructor arguments); "none" (DG) has no predictor.
_BUILDERS = {
    "gru": (GRUPredictor, {}),
    "bigru": (BiGRUPredictor, {}),
    "linear": (LinearPredictor, {}),
    "linear_scaled": (LinearPredictor, {"scale_inputs": True}),
}
PREDICTOR_KINDS = (*_BUILDERS, "none")


def build_predictor(kind, widths, **kwargs):
    """A kind of ``PREDICTOR_KINDS`` -> a predictor; ``"none"`` (DG) -> None."""
    if kind == "none":
        return None
    if kind not in _BUILDERS:
        raise ValueError(f"unknown predictor kind {kind!r}; valid kinds: {PREDICTOR_KINDS}")
    cls, fixed = _BUILDERS[kind]
    return cls(widths, **fixed, **kwargs)
