"""The episodic memory of (architecture, accuracy) pairs that trains the PN.

METHOD.md item 6 (following the NPPM code's ``Episodic_mem`` and
``ImbalancedAccuracySampler``): pairs (hard architecture vector, accuracy of the gated
network on the current mini-batch) are pushed every search step; every
``average_every`` (2) pushes their average is stored. While fewer than ``capacity``
(K = 500) slots are filled it goes to the next free slot; once full, it is averaged
into the stored entry with the closest accuracy: ``entry = (entry + new) / 2`` for the
architecture and the accuracy alike. PN batches are drawn with replacement by an
imbalance-aware sampler: the accuracy range [min, max] of the filled entries is cut
into ``num_bins`` (10) equal bins and each entry is drawn with weight 1/(size of its
bin). Bins are half-open ``[lo, hi)`` with the top bin closed (NPPM puts a value lying
exactly on an inner boundary into the lower bin; immaterial in practice).

All state lives in non-trainable variables created with
``aggregation="only_first_replica"``, so the memory is checkpointed with the model it
belongs to and, under ``tf.distribute.MirroredStrategy``, can be updated in replica
context as long as every replica writes the same values (push the all-reduced
accuracy; sample with the same stateless seed on every replica). Every method is pure
TensorFlow (no Python branching on tensors), usable inside ``tf.function``.

Differences from NPPM: NPPM stores the average one push late (when the next window
starts); here it is stored on the ``average_every``-th push itself.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="pn_tf")
class EpisodicMemory(keras.layers.Layer):
    """Fixed-capacity memory of averaged (architecture, accuracy) pairs.

    Args:
        widths: list of group widths C_i; the stored vectors have ``sum(widths)`` entries.
        capacity: number of slots K.
        average_every: number of pushes averaged into one stored entry.
        num_bins: accuracy bins of the imbalance-aware sampler.

    Example:

    >>> mem = EpisodicMemory([4, 8], capacity=10)
    >>> _ = mem.push(tf.ones(12), 0.5); _ = mem.push(tf.zeros(12), 0.7)
    >>> int(mem.count.numpy()), round(float(mem.accs[0].numpy()), 4)
    (1, 0.6)
    """

    def __init__(self, widths, capacity=500, average_every=2, num_bins=10, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        self.widths = [int(w) for w in widths]
        self.capacity = int(capacity)
        self.average_every = int(average_every)
        self.num_bins = int(num_bins)
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        if self.capacity < 1 or self.average_every < 1 or self.num_bins < 1:
            raise ValueError("capacity, average_every and num_bins must be >= 1")
        self.dim = sum(self.widths)
        self.archs = self._state("archs", (self.capacity, self.dim), "float32")
        self.accs = self._state("accs", (self.capacity,), "float32")
        self.count = self._state("count", (), "int32")
        self.pending_arch = self._state("pending_arch", (self.dim,), "float32")
        self.pending_acc = self._state("pending_acc", (), "float32")
        self.pending_n = self._state("pending_n", (), "int32")
        self.built = True

    def _state(self, name, shape, dtype):
        return self.add_weight(
            name=name,
            shape=shape,
            dtype=dtype,
            initializer="zeros",
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
        )

    # -- architecture vector helpers ------------------------------------------------
    def split(self, arch_concat):
        """(..., sum C_i) -> list of (..., C_i), one per group."""
        return tf.split(arch_concat, self.widths, axis=-1)

    def concat(self, gates):
        """List of (..., C_i) -> (..., sum C_i)."""
        return tf.concat([tf.cast(g, tf.float32) for g in gates], axis=-1)

    # -- writing ----------------------------------------------------------------------
    def push(self, arch_concat, acc):
        """Accumulate one (architecture, accuracy) pair; store an average when due.

        ``arch_concat``: (sum C_i,) (or (1, sum C_i)), e.g. ``concat(hard gates)``;
        ``acc``: scalar accuracy. Returns the new ``count``.
        """
        arch = tf.reshape(tf.cast(arch_concat, tf.float32), [self.dim])
        acc = tf.reshape(tf.cast(acc, tf.float32), [])
        n = self.pending_n + 1
        sum_arch = self.pending_arch + arch
        sum_acc = self.pending_acc + acc
        ready = n >= self.average_every
        mean_arch = sum_arch / tf.cast(n, tf.float32)
        mean_acc = sum_acc / tf.cast(n, tf.float32)

        count = tf.convert_to_tensor(self.count)
        full = count >= self.capacity
        accs = tf.convert_to_tensor(self.accs)
        archs = tf.convert_to_tensor(self.archs)
        nearest = tf.argmin(tf.abs(accs - mean_acc), output_type=tf.int32)
        slot = tf.where(full, nearest, tf.minimum(count, self.capacity - 1))
        new_arch = tf.where(full, (archs[slot] + mean_arch) / 2.0, mean_arch)
        new_acc = tf.where(full, (accs[slot] + mean_acc) / 2.0, mean_acc)

        write = tf.logical_and(ready, tf.equal(tf.range(self.capacity), slot))  # (K,)
        self.archs.assign(tf.where(write[:, None], new_arch[None, :], archs))
        self.accs.assign(tf.where(write, new_acc, accs))
        grow = tf.logical_and(ready, tf.logical_not(full))
        self.count.assign(count + tf.cast(grow, tf.int32))
        self.pending_arch.assign(tf.where(ready, tf.zeros_like(sum_arch), sum_arch))
        self.pending_acc.assign(tf.where(ready, 0.0, sum_acc))
        self.pending_n.assign(tf.where(ready, 0, n))
        return count + tf.cast(grow, tf.int32)

    # -- reading ----------------------------------------------------------------------
    def bin_ids(self):
        """(capacity,) int32 accuracy bin of every slot (meaningless for empty slots)."""
        accs = tf.convert_to_tensor(self.accs)
        filled = self.filled_mask()
        lo = tf.reduce_min(tf.where(filled, accs, float("inf")))
        hi = tf.reduce_max(tf.where(filled, accs, -float("inf")))
        width = (hi - lo) / float(self.num_bins)
        pos = tf.math.divide_no_nan(accs - lo, width)  # 0 where all accs are equal
        pos = tf.where(tf.math.is_finite(pos), pos, 0.0)  # empty memory: lo = inf
        return tf.clip_by_value(tf.cast(tf.floor(pos), tf.int32), 0, self.num_bins - 1)

    def filled_mask(self):
        return tf.range(self.capacity) < self.count

    def sampler_weights(self):
        """(capacity,) sampling probabilities: 1/(size of the entry's bin), normalised;
        0 for empty slots (all zero while the memory is empty)."""
        filled = tf.cast(self.filled_mask(), tf.float32)
        onehot = tf.one_hot(self.bin_ids(), self.num_bins) * filled[:, None]  # (K, bins)
        bin_size = tf.reduce_sum(onehot, axis=0)  # (bins,)
        size = tf.reduce_sum(onehot * bin_size[None, :], axis=1)  # (K,)
        w = tf.math.divide_no_nan(filled, size)
        return tf.math.divide_no_nan(w, tf.reduce_sum(w))

    def sample(self, batch_size, seed):
        """Draw ``batch_size`` stored pairs with replacement by the imbalance-aware sampler.

        ``seed``: a stateless seed, shape [2] int (same on every replica so replicas
        agree). Returns (archs (batch, sum C_i), accs (batch,)). The memory must hold at
        least one entry; an empty memory returns copies of slot 0 (zeros).
        """
        w = self.sampler_weights()
        w = tf.where(tf.reduce_sum(w) > 0, w, tf.one_hot(0, self.capacity))
        logits = tf.where(w > 0, tf.math.log(tf.maximum(w, 1e-30)), -1e30)
        idx = tf.random.stateless_categorical(
            logits[None, :], batch_size, seed=seed, dtype=tf.int32
        )[0]
        return (
            tf.gather(tf.convert_to_tensor(self.archs), idx),
            tf.gather(tf.convert_to_tensor(self.accs), idx),
        )

    def call(self, inputs=None):
        raise NotImplementedError("EpisodicMemory is used through push() and sample()")

    def get_config(self):
        return {
            **super().get_config(),
            "widths": list(self.widths),
            "capacity": self.capacity,
            "average_every": self.average_every,
            "num_bins": self.num_bins,
        }
