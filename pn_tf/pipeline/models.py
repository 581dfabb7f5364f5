"""What a run prunes: a zoo architecture or the user's own model file, behind one interface.

``build()`` returns the *gated* network (a :class:`~pn_tf.layers.ChannelGate` on every
channel group, in identity mode, so it computes the unpruned model) with its initial
weights: random for a zoo architecture, the file's own for ``--model``. The stages
only call ``build()``; the groups come from the zoo's declarations or from the
automatic analysis (:func:`pn_tf.auto.insert_gates`), which is the only difference.
"""

import keras
import numpy as np

from pn_tf.pipeline.errors import PipelineError

# Layers that take raw pixels and rescale them themselves: a model starting with one
# expects 0..255, whatever --input_range says ("auto" relies on it).
_PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization)


class ZooModel:
    """A :data:`pn_tf.models.ARCHITECTURES` entry, normalising inputs for its dataset."""

    kind = "arch"

    def __init__(self, arch, input_size, num_classes, normalization):
        self.name, self.input_size, self.num_classes = arch, input_size, num_classes
        self.normalization = normalization

    def build(self):
        from pn_tf.models import build_model

        return build_model(self.name, input_size=self.input_size, num_classes=self.num_classes,
                           **self.normalization)

    @property
    def pruned_name(self):
        return f"{self.name}_pruned"


class FileModel:
    """A user's ``.keras``/``.h5`` classifier; its groups found by the automatic analysis."""

    kind = "model"

    def __init__(self, path, policy="all", exclude=(), input_size=None):
        from pn_tf.model_file import ModelFileError, load_model

        try:
            self.original = load_model(path)
        except ModelFileError as err:
            raise PipelineError(f"--model: {err}") from err
        self.path, self.policy, self.exclude = path, policy, list(exclude)
        self.name = self.original.name
        self.input_size = _square_image_input(self.original, path, input_size)
        if self.original.inputs[0].shape[1] is None:  # any size: fix it (FLOPs need one)
            self.original = _with_input_size(self.original, self.input_size)
        self.num_classes = _class_count(self.original, path)
        self.starts_with_preprocessing = _starts_with_preprocessing(self.original)
        self.preprocessor_note = _preprocessor_note(self.original)
        missing = [name for name in self.exclude if not _has_layer(self.original, name)]
        if missing:
            raise PipelineError(f"--exclude names no layer of {path}: {missing}")

    def build(self):
        from pn_tf.auto import insert_gates
        from pn_tf.layers import gate_layers

        gated = insert_gates(self.original, policy=self.policy, exclude=self.exclude)
        if not gate_layers(gated):
            raise PipelineError(f"--model={self.path}: the analysis found no channel group to prune "
                                f"with --prune_policy={self.policy} (tools/autoprune.py --dry_run "
                                "lists what it found and why each space was left whole)")
        return gated

    @property
    def pruned_name(self):
        return f"{self.name}_pruned"


def _square_image_input(model, path, input_size=None):
    """The model's square input side; ``input_size`` for a model that takes any size."""
    if len(model.inputs) != 1:
        raise PipelineError(f"--model={path} has {len(model.inputs)} inputs; pn-tf prunes image "
                            "classifiers with one image input")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise PipelineError(f"--model={path} takes inputs of shape {shape}, not images: pn-tf feeds "
                            "RGB images of shape (batch, height, width, 3); use pn_tf.prune with a "
                            "tf.data dataset of your own inputs for other models")
    if shape[1] is None and shape[2] is None:
        if not input_size:
            raise PipelineError(f"--model={path} takes images of any size; pass --input_size=S, the "
                                "side of the square images to prune it for")
        return int(input_size)
    if not shape[1] or shape[1] != shape[2]:
        raise PipelineError(f"--model={path} takes images of shape {shape[1:3]}; the pipeline feeds "
                            "square images of a fixed size: rebuild the model with "
                            "keras.Input((S, S, 3))")
    if input_size and input_size != shape[1]:
        raise PipelineError(f"--input_size={input_size}, but --model={path} takes "
                            f"{shape[1]}x{shape[2]} images; leave it out")
    return int(shape[1])


def _with_input_size(model, size):
    """A copy of ``model`` (same weights) whose input is fixed at ``size`` x ``size``."""
    fixed = keras.models.clone_model(model, input_tensors=keras.Input((size, size, model.inputs[0].shape[-1])))
    fixed.set_weights(model.get_weights())
    return fixed


def _class_count(model, path):
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2 or not model.outputs[0].shape[-1]:
        shapes = [tuple(o.shape) for o in model.outputs]
        raise PipelineError(f"--model={path} outputs {shapes}; pn-tf needs one output of class "
                            "scores, shape (batch, classes)")
    return int(model.outputs[0].shape[-1])


def _first_layers(model):
    """The layers that read the model's input, looking through nested models."""
    from pn_tf.graph.replay import flatten

    flat = flatten(model)
    first = []
    for layer in flat.layers:
        for node in layer._inbound_nodes:
            if any(t is flat.inputs[0] for t in node.input_tensors):
                first.append(layer)
    return first


def _preprocessor_note(model):
    """One line about a preprocessor kept beside the graph (a keras-hub task's), else None.

    keras-hub's ``ImageClassifier`` runs its ``preprocessor`` (resizing, ``x * scale + offset``)
    in ``predict``/``fit`` on raw images, outside the functional graph that pn-tf prunes and
    exports; pn-tf feeds the graph images at ``--input_range`` instead, so the range must match
    what the preprocessor produces.
    """
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        return None
    converter = getattr(preprocessor, "image_converter", None)
    scale, offset = getattr(converter, "scale", None), getattr(converter, "offset", None)
    known = {(1 / 255, 0.0): "0_1", (1 / 127.5, -1.0): "-1_1", (1.0, 0.0): "0_255"}
    match = None
    if np.ndim(scale) == 0 and np.ndim(offset) == 0 and scale is not None and offset is not None:
        match = next((r for (a, b), r in known.items()
                      if abs(float(scale) - a) < 1e-6 and abs(float(offset) - b) < 1e-6), None)
    what = (f"its image converter computes pixels x {scale} + {offset}" if converter is not None
            else "it is not part of the graph")
    hint = (f"pass --input_range={match}" if match else
            "pass the --input_range it produces (0_255, 0_1 or -1_1), or save the model with the "
            "scaling as a Rescaling layer at its input")
    return (f"the model's {type(preprocessor).__name__} runs outside its graph and is not pruned or "
            f"exported ({what}); pn-tf feeds the graph images itself: {hint}")


def _starts_with_preprocessing(model):
    return any(isinstance(layer, _PREPROCESSING) for layer in _first_layers(model))


def _has_layer(model, name):
    return any(layer.name == name for layer in model._flatten_layers(include_self=False))
