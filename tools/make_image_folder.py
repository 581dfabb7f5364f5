"""Writes a TFDS image dataset out as a folder of JPEG files, one sub-folder per class.

The folder is what users bring to ``--image_dir`` (and ``pn_tf.prune``): this makes one from
the shared offline TFDS copy, e.g. imagenette's training split for the worked example.

    python tools/make_image_folder.py --dataset=imagenette --split=train --out=data/imagenette_train
    python tools/make_image_folder.py --dataset=imagenette --split=validation --out=data/imagenette_test

Exit status: 0 on success, 2 on bad arguments or missing data.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="TFDS name, e.g. imagenette or cifar10")
    p.add_argument("--split", default="train", help="TFDS split, e.g. train, validation, train[:10%%]")
    p.add_argument("--out", required=True, help="folder to write (class sub-folders are created)")
    p.add_argument("--data_dir", default=None, help="TFDS data directory (default: $TFDS_DATA_DIR)")
    p.add_argument("--take", type=int, default=None, help="write only this many images")
    args = p.parse_args(argv)
    import tensorflow_datasets as tfds

    from pn_tf import data as data_lib
    from pn_tf.image_folder import write_image_folder

    name = data_lib.DATASETS[args.dataset].tfds_name if args.dataset in data_lib.DATASETS else args.dataset
    try:
        builder = tfds.builder(name, data_dir=data_lib.resolve_data_dir(args.data_dir))
        ds = builder.as_dataset(split=args.split, as_supervised=True, shuffle_files=False)
    except Exception as err:  # noqa: BLE001 - TFDS raises many types for a missing dataset/split
        print(f"make_image_folder: error: cannot read {name} split {args.split!r}: {err}", file=sys.stderr)
        return 2
    if args.take is not None:
        ds = ds.take(args.take)
    names = builder.info.features["label"].names
    count = write_image_folder(tfds.as_numpy(ds), names, args.out)
    print(f"wrote {count} images of {len(names)} classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
