"""pn-tf: structured channel pruning via performance maximization (PN, CVPR 2021).

The package reads in pipeline order:

* ``pn_tf.data``    -- tf.data input pipelines over TFDS (offline by default).
* ``pn_tf.models``  -- the architecture zoo (specs + builders) with gate layers.
* ``pn_tf.layers``  -- the gate layer and small channel ops the zoo needs.
* ``pn_tf.graph``   -- the channel-dependency engine: groups, FLOPs T(a).
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
