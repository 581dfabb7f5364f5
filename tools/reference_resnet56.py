"""An independent, minimal ResNet-56 CIFAR-10 trainer: a yardstick for pn-tf's baseline stage.

    python tools/reference_resnet56.py --epochs=10 --out=runs/reference_resnet56_e10.json

pn-tf's shipped ResNet-56 (90.20% after 160 epochs) stays below published figures (He et al.
2016: 93.03%). This script trains the same network with none of pn-tf's code (not its model
builder, batch norm, data pipeline, optimizer set-up or training loop) in the textbook way:
plain Keras layers with He-normal initialisation, option-A shortcuts, ``tf.image`` per-image
pad-4 random crops and flips, coupled L2 weight decay through the loss (PyTorch's
``weight_decay``), SGD momentum 0.9, one warm-up epoch then cosine decay, float32. Run it and
pn-tf's baseline stage for the same epochs to see whether the gap comes from pn-tf's code or
from the recipe and budget. It trains on the first 90% of the training split (pn-tf's
``train_main``) and prints the test accuracy after every epoch.
"""

import json
import math
import os
import sys
import time

from absl import app, flags


def define_flags():
    """The command line (defined on demand, so tests can import the module)."""
    flags.DEFINE_integer("epochs", 10, "Training epochs.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_float("lr", 0.1, "Peak learning rate.")
    flags.DEFINE_float("weight_decay", 5e-4, "PyTorch-style (coupled) L2 coefficient.")
    flags.DEFINE_integer("seed", 0, "Seed for weights, shuffling and augmentation.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR).")
    flags.DEFINE_string("out", None, "Write the per-epoch history here as JSON.")
    flags.DEFINE_integer("take", None, "Train on only this many images (smoke runs).")


FLAGS = flags.FLAGS

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def datasets(data_dir, batch_size, seed, take):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    train, test = tfds.load("cifar10", split=["train[:90%]", "test"], data_dir=data_dir,
                            as_supervised=True, download=False)
    if take:
        train = train.take(take)

    def normalize(image, label):
        return (tf.cast(image, tf.float32) / 255.0 - MEAN) / STD, label

    def augment(image, label):  # on raw pixels: the padding is black, as in torchvision
        image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
        image = tf.image.random_crop(image, [32, 32, 3])
        return tf.image.random_flip_left_right(image), label

    train = (train.cache().shuffle(50_000, seed=seed, reshuffle_each_iteration=True)
             .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
             .map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
             .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    test = test.map(normalize).batch(500).cache().prefetch(tf.data.AUTOTUNE)
    return train, test


def build(weight_decay):
    import keras
    from keras import layers, ops

    l2 = keras.regularizers.L2(weight_decay / 2)  # d/dw (wd / 2 * w^2) = wd * w, as PyTorch

    def conv(x, filters, strides=1):
        return layers.Conv2D(filters, 3, strides, padding="same", use_bias=False,
                             kernel_initializer="he_normal", kernel_regularizer=l2)(x)

    def bn(x):
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, gamma_regularizer=l2,
                                         beta_regularizer=l2)(x)

    def block(x, filters, strides):
        y = layers.ReLU()(bn(conv(x, filters, strides)))
        y = bn(conv(y, filters))
        if strides > 1 or x.shape[-1] != filters:
            extra = filters - x.shape[-1]
            x = layers.Lambda(lambda t: ops.pad(
                t[:, ::strides, ::strides, :],
                [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]]))(x)
        return layers.ReLU()(layers.Add()([y, x]))

    inputs = keras.Input((32, 32, 3))
    x = layers.ReLU()(bn(conv(inputs, 16)))
    for stage, filters in enumerate((16, 32, 64)):
        for index in range(9):
            x = block(x, filters, 2 if stage and not index else 1)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, kernel_regularizer=l2, bias_regularizer=l2)(x)
    return keras.Model(inputs, outputs)


def schedule(peak, steps_per_epoch, epochs):
    import keras

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            total = float(steps_per_epoch * epochs)
            warm = float(steps_per_epoch)
            cosine = 0.5 * peak * (1 + keras.ops.cos(math.pi * (step - warm) / (total - warm)))
            return keras.ops.where(step < warm, peak * (step + 1) / warm, cosine)

    return WarmupCosine()


def main(argv):
    del argv
    import keras

    keras.utils.set_random_seed(FLAGS.seed)
    data_dir = FLAGS.data_dir or os.environ.get("TFDS_DATA_DIR")
    train, test = datasets(data_dir, FLAGS.batch_size, FLAGS.seed, FLAGS.take)
    steps = int(train.cardinality())  # full batches of train[:90%] (or of --take images)
    model = build(FLAGS.weight_decay)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule(FLAGS.lr, steps, FLAGS.epochs), momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    print(f"ResNet-56 reference: {model.count_params():,} parameters, {FLAGS.epochs} epochs of "
          f"{steps} steps", flush=True)
    start = time.time()
    history = model.fit(train, epochs=FLAGS.epochs, validation_data=test, verbose=2).history
    result = {"test_accuracy": history["val_accuracy"][-1], "epochs": FLAGS.epochs,
              "seconds": round(time.time() - start), "history": history,
              "recipe": {"lr": FLAGS.lr, "weight_decay": FLAGS.weight_decay,
                         "batch_size": FLAGS.batch_size, "seed": FLAGS.seed}}
    print(f"test accuracy after {FLAGS.epochs} epochs: {result['test_accuracy']:.4f}")
    if FLAGS.out:
        with open(FLAGS.out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(FLAGS.out + ".tmp", FLAGS.out)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
