"""Channel tiles: the runtime's kernels compute channels in runs, so time steps, it does not slope.

XNNPACK's convolution kernels produce output channels in tiles (on a 2-core AMD EPYC with
TensorFlow 2.21: 16 for float32 and int8) and int8 kernels also read input channels in tiles
(8): a 1x1 convolution with 17 output channels takes as long as one with 32, and one with 16
as long as one with 4. A latency table timed at uniform widths (multiples of C/16) and
interpolated linearly in between therefore underestimates the networks a search selects,
whose widths are anything: in ResNet50V2's random-width check the estimate was 10.6% low on
average, every configuration the same way. :func:`pn_tf.latency.table.measure_tiles` finds the
tiles by timing a 1x1 convolution over a range of output and of input channel counts; the
table keeps them and counts a unit's channels as :func:`tiled` counts (rounded up to whole
tiles, never above the full count).

Convolutions with a spatial kernel (3x3, 5x5) run other kernels than 1x1 ones: here float32
3x3 and 5x5 convolutions cost the same for 40 as for 64 output channels and for 72 as for 96
(1x1 ones step every 16), so their output tile is probed apart, with a 3x3 convolution at
:data:`PROBE_WIDE` output channels (above 32, where the step shows), and kept as
``"out_spatial"``. A table without it (format 4 and earlier) uses ``"out"`` for every unit.
"""

import numpy as np

CANDIDATES = (1, 2, 4, 8, 16, 32)
PROBE_CHANNELS = tuple(range(4, 69, 4))
PROBE_WIDE = tuple(range(36, 133, 8))  # the spatial probe's output channels
PROBE_FIXED = 64  # the other channel axis of the probe convolution
PROBE_SIZE = 16  # its spatial size


def tiled(count, tile, full, small=None):
    """``count`` channels rounded up to whole tiles, at most ``full`` (numpy or floats; ``tile``
    may be one per count); a tile of 1 leaves the count as it is. ``small`` (a spatial
    convolution's output: the 1x1 tile): counts up to one ``tile`` round to ``small`` tiles
    (a 3x3 convolution with 8 output channels costs half of one with 24 or 32)."""
    if small is not None:
        below = tiled(count, small, full)
        return np.where(np.asarray(count, np.float64) <= np.asarray(tile), below, tiled(count, tile, full))
    if np.ndim(tile) == 0 and tile <= 1:
        return count
    count = np.asarray(count, np.float64)
    return np.where(np.asarray(tile) > 1, np.minimum(np.ceil(count / tile - 1e-9) * tile, full), count)


def fit_tile(channels, times, candidates=CANDIDATES):
    """The tile that best explains ``times`` as ``a + b * ceil(channels / tile)``.

    Least squares for each candidate; the smallest candidate within 5% of the best residual
    wins (probed at multiples of 4, tiles 1, 2 and 4 fit alike: no tile is assumed then).
    """
    channels, times = np.asarray(channels, np.float64), np.asarray(times, np.float64)
    residuals = []
    for tile in candidates:
        columns = np.stack([np.ones_like(channels), np.ceil(channels / tile)], axis=1)
        beta = np.linalg.lstsq(columns, times, rcond=None)[0]
        residuals.append(float(np.sum((columns @ beta - times) ** 2)))
    best = min(residuals)
    return next(t for t, r in zip(candidates, residuals) if r <= 1.05 * best + 1e-18)


def probe_model(axis, channels):
    """The probe: a batch-1 1x1 convolution with ``channels`` output (``axis="out"``) or input
    (``"in"``) channels and :data:`PROBE_FIXED` on the other side; ``"out_spatial"``: a 3x3
    one with ``channels`` output channels."""
    import keras

    shape = (PROBE_SIZE, PROBE_SIZE, PROBE_FIXED if axis != "in" else channels)
    x = keras.Input(shape, batch_size=1)
    if axis == "out_spatial":
        return keras.Model(x, keras.layers.Conv2D(channels, 3, padding="same")(x))
    return keras.Model(x, keras.layers.Conv2D(channels if axis == "out" else PROBE_FIXED, 1)(x))


PROBES = (tuple((axis, c) for axis in ("out", "in") for c in PROBE_CHANNELS)
          + tuple(("out_spatial", c) for c in PROBE_WIDE))


def spatial(layer):
    """Whether ``layer`` is a convolution with a spatial kernel (its output channels count in
    ``"out_spatial"`` tiles); depthwise and separable convolutions are not (per-channel, and a
    1x1 pointwise product)."""
    import keras

    kinds = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    other = (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.SeparableConv1D)
    return (isinstance(layer, kinds) and not isinstance(layer, other)
            and int(np.prod(getattr(layer, "kernel_size", (1,)))) > 1)


def tiles_from_times(times_ms):
    """``{"out": tile, "in": tile, "out_spatial": tile}`` from the probes' times, in the order
    of :data:`PROBES` (:func:`pn_tf.latency.table.measure_tiles` times them)."""
    n = len(PROBE_CHANNELS)
    return {"out": fit_tile(PROBE_CHANNELS, times_ms[:n]), "in": fit_tile(PROBE_CHANNELS, times_ms[n:2 * n]),
            "out_spatial": fit_tile(PROBE_WIDE, times_ms[2 * n:])}
