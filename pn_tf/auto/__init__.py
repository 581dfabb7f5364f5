"""Prune any Keras model (functional, Sequential, nested): find its groups, gate, search, extract.

The one channel-dependency engine (:class:`pn_tf.graph.ChannelGraph`) does the
analysis; this package only decides *which* of the spaces it finds to prune and
*where* to put the gates, then hands the gated copy to the same FLOPs model, PN
search and extraction (:func:`pn_tf.extract.extract_at`) that the zoo uses.

* :func:`find_groups` lists the prunable channel spaces of an un-gated model.
* :func:`insert_gates` builds a copy of the model (same weights) with one
  :class:`~pn_tf.layers.ChannelGate` per space, called wherever a convolution or
  dense layer reads that space after the last operation that could turn a zero
  back into a non-zero value (BN, bias, sigmoid). With gates in ``"identity"``
  mode the copy computes exactly the original model.
* :func:`prune` runs the PN search on the gated copy and extracts the narrow model.

Where a read sees several spaces laid side by side (DenseNet: a BN-ReLU over a
concatenation), one gate cannot sit on the tensor; the copy then multiplies it by
``concat(gate_i(ones_i))``, where ``ones_i`` is a 1x1 tensor of ones of space i
built from that space's producer output with standard layers
(``GlobalAveragePooling2D`` + ``Rescaling(0, offset=1)``). The engine reads this
as ordinary gates, concatenation and a multiply, so nothing downstream changes.

Modules:

* ``analysis`` -- :class:`Analysis`, ``POLICIES``, :func:`analyse`, :func:`find_groups`,
  :func:`strip_gates`.
* ``insert``   -- :func:`insert_gates` and its graph-rebuild helpers.
* ``pruning``  -- :func:`prune`, :func:`random_gate_logits`.
* ``_util``    -- private helpers shared by the above (logger, ``_quiet``).
"""

from pn_tf.auto.analysis import POLICIES, Analysis, analyse, find_groups, strip_gates
from pn_tf.auto.insert import insert_gates
from pn_tf.auto.pruning import prune, random_gate_logits

__all__ = ["Analysis", "POLICIES", "analyse", "find_groups", "insert_gates", "prune",
           "random_gate_logits", "strip_gates"]

# The public functions keep the module name they had when this was one file.
for _function in (analyse, find_groups, insert_gates, prune, random_gate_logits, strip_gates):
    _function.__module__ = __name__
del _function
