"""Loading a user's saved Keras model with a message that says what is wrong with the file.

Keras reports a corrupt ``.keras`` file as "File not found" and a broken ``.h5`` as an HDF5
signature error; :func:`load_model` checks the file first and names the actual problem.

A ``.keras`` file names the package of every class it holds (``"module"`` in its config): the
packages other than Keras and pn-tf (keras-hub, a user's own) are imported before loading, so
their classes are registered, and one that is not installed is named in the error.
"""

import importlib
import importlib.util
import json
import os
import zipfile

_KNOWN_ROOTS = {"keras", "builtins", "pn_tf", "numpy", "tensorflow"}


def _class_packages(path):
    """The top-level packages named by the classes in a ``.keras`` file's config (sorted)."""
    with zipfile.ZipFile(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except (KeyError, ValueError):
            return []
    roots = set()

    def walk(node):
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str) and module and "class_name" in node:
                roots.add(module.split(".")[0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(roots - _KNOWN_ROOTS)


def _import_packages(path):
    """Imports the packages ``path``'s classes come from (registering their classes)."""
    for root in _class_packages(path):
        if importlib.util.find_spec(root) is None:
            hint = (" (pn-tf's optional extra: pip install -e \".[hub]\")" if root == "keras_hub" else "")
            raise ModelFileError(f"{path!r} holds classes from the package {root!r}, which is not "
                                 f"installed; install it{hint} to load the model")
        try:
            importlib.import_module(root)
        except Exception as err:  # noqa: BLE001 - any import failure, named
            raise ModelFileError(f"{path!r} holds classes from the package {root!r}, which fails to "
                                 f"import: {type(err).__name__}: {str(err)[:200]}") from err


class ModelFileError(ValueError):
    """The model file is missing, of an unknown kind, corrupt, or not loadable."""


def load_model(path):
    """The Keras model saved at ``path`` (``.keras`` or legacy ``.h5``), uncompiled.

    pn-tf's own layers are registered first, so models from pn-tf load too.

    Raises:
        ModelFileError: with a one-line explanation naming ``path``.
    """
    import keras

    import pn_tf.layers  # noqa: F401 -- registers pn-tf's layers for deserialization

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"model file {path!r} does not exist")
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a folder; pass a .keras (or legacy .h5) file (a SavedModel "
                             "folder cannot be loaded as a Keras model in Keras 3)")
    if path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"{path!r} is not a valid .keras file (it is not a zip archive): "
                                 "the file is corrupt or truncated; save the model again")
    elif path.endswith((".h5", ".hdf5")):
        with open(path, "rb") as f:
            if f.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ModelFileError(f"{path!r} is not a valid HDF5 file: the file is corrupt or "
                                     "truncated; save the model again")
    else:
        raise ModelFileError(f"{path!r} is neither a .keras nor a .h5 file; save the model with "
                             "model.save('model.keras')")
    if path.endswith(".keras"):
        _import_packages(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for unloadable files
        first = str(err).splitlines()[0] if str(err) else ""
        raise ModelFileError(f"cannot load {path!r}: {type(err).__name__}: {first[:300]} (a custom "
                             "layer must be importable and registered with "
                             "keras.saving.register_keras_serializable)") from err
