"""Classifies image files with a ``.tflite`` model through the LiteRT interpreter.

    python tools/tflite_predict.py --model=resnet56_int8.tflite --labels=cifar10 cat.png dog.jpg
    python tools/tflite_predict.py --model=m.tflite --top_k=3 --json img.png

Runs as a device would: only ``ai-edge-litert``, numpy and Pillow, no TensorFlow. Each image
is decoded to RGB, brought to the model's input size (a 32x32 CIFAR model: resized directly;
a larger one: shorter side resized to ``size / 0.875``, then a centre crop, as the evaluation
pipeline does) and fed as float pixels 0..255 (the model normalises inside; int8 I/O
models are quantized with their input scale), or scaled by ``--input_range`` for a model that
takes 0..1 or -1..1. Class names come from ``--labels``, else from the ``labels.txt`` that the
pipeline writes beside the exported file. Prints the top-k classes per file.
"""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from pn_tf.tflite.runtime import input_size, load_interpreter, run_interpreter  # noqa: E402
from pn_tf.data_sources import INPUT_SCALES  # noqa: E402
from pn_tf.pipeline.artifacts import read_labels as labels_beside  # noqa: E402

flags.DEFINE_string("model", None, "Path of the .tflite model.")
flags.DEFINE_string("labels", None, "Label file (one name per line) or 'cifar10'; default: the "
                    "labels.txt beside --model if there is one, else class indices.")
flags.DEFINE_enum("input_range", "0_255", ["0_255", "0_1", "-1_1"], "Pixel range the model takes "
                  "(the pipeline's --input_range).")
flags.DEFINE_integer("top_k", 5, "Classes printed per image.")
flags.DEFINE_integer("num_threads", None, "Interpreter threads (LiteRT default when unset).")
flags.DEFINE_bool("json", False, "Print one JSON object per run instead of text.")
flags.DEFINE_string("data_dir", None, "TFDS data dir holding cifar10 label names "
                    "(default: $TFDS_DATA_DIR, then ~/tensorflow_datasets).")
flags.mark_flag_as_required("model")

FLAGS = flags.FLAGS
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck")
_CIFAR_SIDE = 32
_CROP_FRACTION = 0.875


def cifar10_labels(data_dir=None):
    """CIFAR-10 names from the TFDS ``label.labels.txt`` if one is found, else the builtin list."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")
    found = sorted(glob.glob(os.path.join(data_dir, "cifar10", "*", "label.labels.txt")))
    return read_labels(found[-1]) if found else list(CIFAR10_LABELS)


def read_labels(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def load_image(path, height, width):
    """Float32 RGB pixels ``[height, width, 3]`` in 0..255, resized/cropped as documented."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.load()
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path!r}: {err}") from err
    if max(height, width) <= _CIFAR_SIDE:
        img = img.resize((width, height), Image.BILINEAR)
    else:
        scale = max(height, width) / _CROP_FRACTION / min(img.size)
        img = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))),
                         Image.BILINEAR)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        img = img.crop((left, top, left + width, top + height))
    return np.asarray(img, dtype=np.float32)


def probabilities(outputs):
    """Softmax of logits; outputs that already are probabilities are kept."""
    if np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3):
        return outputs
    z = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_k(probs, k, labels):
    order = np.argsort(-probs)[:k]
    return [{"index": int(i), "label": labels[i] if labels and i < len(labels) else str(int(i)),
             "prob": float(probs[i])} for i in order]


def classify(model_path, image_paths, k=5, labels=None, num_threads=None, input_range="0_255"):
    """``[{"file": ..., "top_k": [{"index", "label", "prob"}, ...]}, ...]`` for the images."""
    interpreter = load_interpreter(model_path, num_threads)
    height, width = input_size(interpreter)
    scale, offset = INPUT_SCALES[input_range]
    images = np.stack([load_image(p, height, width) for p in image_paths]) * scale + offset
    probs = probabilities(np.asarray(run_interpreter(interpreter, images.astype(np.float32))))
    return [{"file": p, "top_k": top_k(row, k, labels)} for p, row in zip(image_paths, probs)]


def main(argv):
    image_paths = argv[1:]
    if not image_paths:
        print("error: give one or more image files", file=sys.stderr)
        return 2
    labels = None
    if FLAGS.labels == "cifar10":
        labels = cifar10_labels(FLAGS.data_dir)
    elif FLAGS.labels:
        labels = read_labels(FLAGS.labels)
    else:
        labels = labels_beside(FLAGS.model)
    try:
        results = classify(FLAGS.model, image_paths, FLAGS.top_k, labels, FLAGS.num_threads,
                           FLAGS.input_range)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if FLAGS.json:
        print(json.dumps({"model": FLAGS.model, "results": results}))
        return 0
    for result in results:
        print(result["file"])
        for rank, entry in enumerate(result["top_k"], 1):
            print(f"  {rank}. {entry['label']:<20} {entry['prob']:.4f}")
    return 0


if __name__ == "__main__":
    app.run(main)
