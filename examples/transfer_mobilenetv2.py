"""The worked example's *user* side: a classifier built and trained the way users build them.

A ``keras.applications.MobileNetV2`` backbone nested inside a model with its own
preprocessing (pixels 0..255 -> -1..1) and a new 10-class softmax head, trained by plain
``model.fit`` on a folder of JPEG class sub-folders, saved as ``.keras``. Nothing here
uses pn-tf: this is the model a user brings to ``pn-tf --model=... --image_dir=...``
(docs/worked_example.md gives every command and what it measured).

    python examples/transfer_mobilenetv2.py --train_dir=runs/example/imagenette_train \
        --val_dir=runs/example/imagenette_val --out=runs/example/mobilenetv2_035.keras
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def build(num_classes, size, alpha):
    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                              include_top=False, weights=None)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2_classifier")


def folder(path, size, batch_size, training):
    ds = keras.utils.image_dataset_from_directory(path, image_size=(size, size), batch_size=None,
                                                  crop_to_aspect_ratio=True, shuffle=training,
                                                  seed=0)
    names = ds.class_names
    if training:
        ds = ds.map(lambda x, y: (tf.image.random_flip_left_right(x), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), names


def refresh_batchnorm(model, batches, steps=40):
    """Sets every BN's moving statistics to the average over ``steps`` training batches.

    keras.applications' BN layers average with momentum 0.999: trained from scratch, their
    moving statistics lag behind the weights, and this model then scored 10% (chance) in
    inference mode while 97% in training mode; refreshed, it scores what it learned.
    """
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for step, (images, _) in enumerate(batches.take(steps)):
        for bn in bns:
            bn.momentum = step / (step + 1.0)  # batch k gets weight 1 / (k + 1)
        model(images, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_dir", required=True)
    p.add_argument("--val_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--refresh_only", action="store_true",
                   help="load --out and only refresh its BN statistics")
    args = p.parse_args()
    keras.utils.set_random_seed(0)
    train, names = folder(args.train_dir, args.size, args.batch_size, training=True)
    val, _ = folder(args.val_dir, args.size, 128, training=False)
    if args.refresh_only:
        model = keras.saving.load_model(args.out)
    else:
        model = build(len(names), args.size, args.alpha)
        steps = int(train.cardinality()) * args.epochs
        model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(train, validation_data=val, epochs=args.epochs, verbose=2)
    print(f"validation accuracy before the BN refresh {model.evaluate(val, verbose=0)[1]:.4f}")
    refresh_batchnorm(model, train)
    tmp = args.out + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, args.out)
    print(f"saved {args.out}; validation accuracy {model.evaluate(val, verbose=0)[1]:.4f}")


if __name__ == "__main__":
    main()
