"""Multi-head attention with a gate on its heads: how the PN search sees attention heads.

A head is the unit of attention that can be removed: its query, key and value projections
and its rows of the output projection go together. No tensor between layers carries the
heads on its last axis (they live inside one ``MultiHeadAttention`` call), so the gate of the
heads sits inside the layer: :class:`HeadGatedAttention` is a ``MultiHeadAttention`` that
multiplies each head's attention output by one value of a :class:`ChannelGate` over the
heads, right before the output projection. A hard 0 for head h removes exactly what
deleting head h from all four projections removes, so the extracted model is a plain
``keras.layers.MultiHeadAttention`` with fewer heads (``num_heads`` narrowed).

Gate insertion swaps a prunable ``MultiHeadAttention`` for this class; gate stripping and
extraction swap it back (:meth:`HeadGatedAttention.ungated_config`).
"""

import keras
from keras import ops

from pn_tf.layers.gates import ChannelGate


@keras.saving.register_keras_serializable(package="pn_tf")
class HeadGatedAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` whose heads pass a :class:`ChannelGate` (one value per head).

    Args:
        *args, **kwargs: those of ``keras.layers.MultiHeadAttention``.
        head_gate: the gate's config (a dict, as ``get_config`` writes it), or None for a new
            identity gate named ``<name>_heads_gate``.

    The gate is a sub-layer, so :func:`~pn_tf.layers.gate_layers`, ``set_gate_mode`` and the
    search find it like any other gate. In ``"identity"`` mode the layer computes exactly
    what ``MultiHeadAttention`` computes.
    """

    def __init__(self, *args, head_gate=None, **kwargs):
        super().__init__(*args, **kwargs)
        config = dict(head_gate or {"name": f"{self.name}_heads_gate"})
        self.head_gate = ChannelGate.from_config(config)

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        self.head_gate.build((self.num_heads,))

    def _compute_attention(self, query, key, value, *args, **kwargs):
        # Overrides MultiHeadAttention's private hook, which its docstring names as the place
        # to customise attention; tests/test_attention.py checks that the gate acts through it.
        # Keras routes a causal-only mask through an explicit mask for a subclass (same result).
        output, scores = super()._compute_attention(query, key, value, *args, **kwargs)
        return self.gate_heads(output), scores

    def gate_heads(self, output):
        """``output`` (``(batch, ..., heads, value_dim)``) with head h scaled by gate value h."""
        if self.head_gate.mode == "identity":
            return output
        values = ops.cast(self.head_gate.gate_values(), output.dtype)
        return output * ops.reshape(values, (self.num_heads, 1))

    def get_config(self):
        return dict(super().get_config(), head_gate=self.head_gate.get_config())

    def ungated_config(self):
        """``(class, config)`` of the same attention without the gate: a plain MultiHeadAttention."""
        config = self.get_config()
        config.pop("head_gate")
        return keras.layers.MultiHeadAttention, config

    @classmethod
    def gating(cls, layer, gate_name):
        """An unbuilt copy of MultiHeadAttention ``layer`` (same config and name) whose heads pass a
        new identity gate called ``gate_name``; the caller copies the weights once it is built."""
        return cls.from_config(dict(layer.get_config(), head_gate={"name": gate_name}))
