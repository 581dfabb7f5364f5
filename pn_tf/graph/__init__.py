"""The channel-dependency engine: channel groups and FLOPs, read off the Keras graph.

What a layer type means for channels is one rule in :mod:`pn_tf.graph.rules`;
:func:`register_rule` adds one for a user's own layer.
"""

from pn_tf.graph.channels import ChannelGraph, ChannelGroup
from pn_tf.graph.errors import GraphAnalysisError
from pn_tf.graph.flops import FlopsModel, count_params
from pn_tf.graph.replay import flatten, replay
from pn_tf.graph.rules import ChannelRule, register_rule, rule_for, unregister_rule

__all__ = ["ChannelGraph", "ChannelGroup", "ChannelRule", "FlopsModel", "GraphAnalysisError",
           "count_params", "flatten", "register_rule", "replay", "rule_for", "unregister_rule"]
