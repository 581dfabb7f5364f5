"""Parameter-free channel operations used by the zoo.

They are layers (not ``keras.ops`` calls or Lambdas) so that models holding them
save and load by config, and so that the channel-dependency engine
(:mod:`pn_tf.graph`) can recognise them by type.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pn_tf")
class ChannelZeroPad(keras.layers.Layer):
    """Appends zero channels: ``before`` in front and ``after`` behind.

    This is the parameter-free "option A" shortcut of the CIFAR ResNets
    (He et al. 2016, section 4.2) when the width doubles.

    Args:
        before: int. Number of zero channels put before the input's channels.
        after: int. Number of zero channels put after them.
    """

    def __init__(self, before, after, **kwargs):
        super().__init__(**kwargs)
        if before < 0 or after < 0:
            raise ValueError(f"ChannelZeroPad needs before, after >= 0, got {before}, {after}")
        self.before = int(before)
        self.after = int(after)

    def call(self, inputs):
        rank = len(inputs.shape)
        pad = [[0, 0]] * (rank - 1) + [[self.before, self.after]]
        return ops.pad(inputs, pad)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        if channels is not None:
            channels = channels + self.before + self.after
        return tuple(input_shape[:-1]) + (channels,)

    def get_config(self):
        config = super().get_config()
        config.update(before=self.before, after=self.after)
        return config


@keras.saving.register_keras_serializable(package="pn_tf")
class ChannelSplit(keras.layers.Layer):
    """Splits the channel axis into ``num_splits`` equal, contiguous parts.

    Args:
        num_splits: int. How many parts; must divide the channel count.
    """

    def __init__(self, num_splits=2, **kwargs):
        super().__init__(**kwargs)
        if num_splits < 1:
            raise ValueError(f"ChannelSplit needs num_splits >= 1, got {num_splits}")
        self.num_splits = int(num_splits)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.num_splits:
            raise ValueError(
                f"{self.name}: {channels} channels cannot be split into {self.num_splits} parts"
            )

    def call(self, inputs):
        return ops.split(inputs, self.num_splits, axis=-1)

    def compute_output_shape(self, input_shape):
        part = tuple(input_shape[:-1]) + (input_shape[-1] // self.num_splits,)
        return [part] * self.num_splits

    def get_config(self):
        config = super().get_config()
        config.update(num_splits=self.num_splits)
        return config


@keras.saving.register_keras_serializable(package="pn_tf")
class ChannelShuffle(keras.layers.Layer):
    """ShuffleNet's channel shuffle: view C as (groups, C/groups), transpose, flatten.

    With ``groups=2`` channel ``g * C/2 + j`` moves to position ``2 * j + g``
    (Zhang et al. 2018; Ma et al. 2018).

    Args:
        groups: int. Number of groups; must divide the channel count.
    """

    def __init__(self, groups=2, **kwargs):
        super().__init__(**kwargs)
        if groups < 1:
            raise ValueError(f"ChannelShuffle needs groups >= 1, got {groups}")
        self.groups = int(groups)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ValueError(f"{self.name}: {channels} channels not divisible by {self.groups}")

    def call(self, inputs):
        shape = ops.shape(inputs)
        channels = inputs.shape[-1]
        x = ops.reshape(inputs, (-1, shape[1], shape[2], self.groups, channels // self.groups))
        x = ops.transpose(x, (0, 1, 2, 4, 3))
        return ops.reshape(x, (-1, shape[1], shape[2], channels))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups)
        return config
