"""Custom Keras layers: the channel gate (and attention with gated heads), the channel ops of the
zoo and a fused batch norm."""

from pn_tf.layers import batchnorm
from pn_tf.layers.attention import HeadGatedAttention
from pn_tf.layers.channel_ops import ChannelShuffle, ChannelSplit, ChannelZeroPad
from pn_tf.layers.gates import ChannelGate, gate_layers, set_gate_mode
from pn_tf.layers.parameter import Parameter

__all__ = [
    "ChannelGate",
    "ChannelShuffle",
    "ChannelSplit",
    "ChannelZeroPad",
    "HeadGatedAttention",
    "Parameter",
    "batchnorm",
    "gate_layers",
    "set_gate_mode",
]
