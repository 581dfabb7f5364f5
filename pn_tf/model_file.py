"""Loading a user's saved Keras model with a message that says what is wrong with the file.

Keras reports a corrupt ``.keras`` file as "File not found" and a broken ``.h5`` as an HDF5
signature error; :func:`load_model` checks the file first and names the actual problem.
"""

import os
import zipfile


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
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for unloadable files
        first = str(err).splitlines()[0] if str(err) else ""
        raise ModelFileError(f"cannot load {path!r}: {type(err).__name__}: {first[:300]} (a custom "
                             "layer must be importable and registered with "
                             "keras.saving.register_keras_serializable)") from err
