"""The channel-dependency engine: channel groups and FLOPs, read off the Keras graph."""

from pn_tf.graph.channels import ChannelGraph, ChannelGroup, GraphAnalysisError
from pn_tf.graph.flops import FlopsModel, count_params

__all__ = ["ChannelGraph", "ChannelGroup", "FlopsModel", "GraphAnalysisError", "count_params"]
