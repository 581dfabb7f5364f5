"""Custom Keras layers: the channel gate and the channel ops of the zoo."""

from pn_tf.layers.channel_ops import ChannelShuffle, ChannelSplit, ChannelZeroPad
from pn_tf.layers.gates import ChannelGate, gate_layers, set_gate_mode

__all__ = [
    "ChannelGate",
    "ChannelShuffle",
    "ChannelSplit",
    "ChannelZeroPad",
    "gate_layers",
    "set_gate_mode",
]
