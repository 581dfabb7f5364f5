"""The coverage harness: which models pn-tf prunes, checked the same way for every one.

* ``models`` -- models written the way users write them (Sequential, nested backbones, 1-D
  audio convolutions, a U-Net, ...) and keras.applications at small sizes.
* ``check``  -- :func:`~pn_tf.coverage.check.check_model`: gate, extract at random gates,
  compare with the hard-gated twin, count MACs, convert to TFLite; one row of
  docs/coverage.md (``tools/coverage.py``).
* ``pipeline`` -- a row saved as a user's ``.keras`` classifier with a generated image folder,
  run through ``python -m pn_tf.train`` under a FLOPs and a latency budget; results cached per
  (row, budget); docs/coverage_pipeline.md (``tools/coverage_pipeline.py``).
"""
