"""Rebuilding a functional graph node by node: the one way pn-tf copies, flattens and edits models.

:func:`replay` calls a model's operations again on fresh inputs. Hooks substitute an
operation (a narrowed or cloned layer), rewrite a call's arguments (a sliced constant)
or wrap a call's outputs (a gate). Nested functional and Sequential models are inlined
on the way, so the result is always one flat functional graph: :func:`flatten` is a
replay without hooks. Gate insertion, extraction, gate stripping and clean-up all go
through here.

Flattening keeps every layer object and its name. An inner layer whose name is taken
by a different layer of the outer graph is cloned under ``<sub-model>_<name>`` (with its
weights), and the rename is reported. A nested model called with ``training=False``
(transfer learning's frozen backbone) passes that argument on to each of its layers
that takes one, so batch norm keeps its inference behaviour in the flat graph.
"""

import logging

import keras

from pn_tf.graph.errors import GraphAnalysisError

log = logging.getLogger(__name__)


def _is_functional(model):
    return hasattr(model, "_nodes_by_depth") and hasattr(model, "_inputs_struct")


def graph_of(model):
    """The functional graph behind a functional or Sequential model.

    Raises:
        GraphAnalysisError: an unbuilt Sequential or a subclassed model (with how to fix it).
    """
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise GraphAnalysisError(
                f"Sequential model '{model.name}' is not built: start it with keras.Input(shape) "
                "or call model.build(input_shape) first")
        return functional
    if not _is_functional(model):
        raise GraphAnalysisError(
            f"'{model.name}' is a subclassed keras.Model; pn-tf reads functional and Sequential "
            "models (build it with keras.Model(inputs, outputs) or keras.Sequential)")
    return model


def is_nested_model(op):
    """Whether ``op`` is a functional or Sequential model that replay inlines."""
    if not isinstance(op, keras.Model):
        return False
    if isinstance(op, keras.Sequential):
        return getattr(op, "_functional", None) is not None
    return _is_functional(op)


def needs_flattening(model):
    """Whether ``model`` is Sequential or holds a nested model."""
    if isinstance(model, keras.Sequential):
        return True
    return any(is_nested_model(node.operation) for nodes in graph_of(model)._nodes_by_depth.values()
               for node in nodes)


class _Names:
    """Layer names of the new graph; clones a layer whose name another layer took."""

    def __init__(self):
        self.owner = {}  # name -> layer object
        self.renamed = {}  # id(original) -> clone
        self.pairs = []  # (original, clone): weights copied once the clone is built
        self.messages = []

    def claim(self, layer, scope):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if id(layer) in self.renamed:
            return self.renamed[id(layer)]
        owner = self.owner.setdefault(layer.name, layer)
        if owner is layer:
            return layer
        base = f"{scope}_{layer.name}" if scope else layer.name
        name, k = base, 1
        while name in self.owner:
            k += 1
            name = f"{base}_{k}"
        config = dict(layer.get_config(), name=name)
        clone = layer.__class__.from_config(config)
        self.renamed[id(layer)] = clone
        self.pairs.append((layer, clone))
        self.owner[name] = clone
        self.messages.append(f"layer '{layer.name}' of '{scope}' is named '{name}' in the flat model "
                             "(its name was taken)")
        return clone


def replay(model, substitute=None, rewrite=None, after=None, name=None):
    """A new flat functional model that calls ``model``'s operations again.

    Args:
        model: a functional or Sequential keras.Model.
        substitute: ``op -> op`` (called once per operation): what to call instead, or
            None to skip the call (its first input passes through).
        rewrite: ``(node, op, args, kwargs) -> (args, kwargs)``: the arguments of one call.
        after: ``(node, outputs) -> outputs``: wraps the new outputs of an original node.
        name: the new model's name (default: ``model``'s).

    Returns:
        The new keras.Model. Layers that ``substitute`` returns unchanged are shared
        with ``model``.
    """
    graph = graph_of(model)
    memo, names = {}, _Names()

    def resolve(op, scope):
        key = id(op)
        if key not in memo:
            new = op if substitute is None else substitute(op)
            memo[key] = None if new is None else names.claim(new, scope)
        return memo[key]

    tensors = {}
    for x in graph.inputs:
        layer = x._keras_history[0]
        tensors[id(x)] = keras.Input(batch_shape=tuple(x.shape), dtype=x.dtype, name=layer.name)
        names.owner.setdefault(layer.name, layer)
    _run(graph, tensors, resolve, rewrite, after, training=None, scope="")
    for message in names.messages:
        log.warning(message)
    for original, clone in names.pairs:
        clone.set_weights(original.get_weights())
    inputs = keras.tree.map_structure(lambda x: tensors[id(x)], graph._inputs_struct)
    outputs = keras.tree.map_structure(lambda x: tensors[id(x)], graph._outputs_struct)
    return keras.Model(inputs, outputs, name=name or model.name)


def _run(graph, tensors, resolve, rewrite, after, training, scope):
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.is_input:
                continue
            op = node.operation
            explicit = node.arguments.kwargs.get("training")
            call_training = explicit if explicit is not None else training
            if is_nested_model(op):
                inner = graph_of(op)
                for x, value in zip(keras.tree.flatten(inner._inputs_struct), node.input_tensors):
                    tensors[id(x)] = tensors[id(value)]
                _run(inner, tensors, resolve, rewrite, after, call_training, op.name)
                for y, inner_y in zip(node.outputs, keras.tree.flatten(inner._outputs_struct)):
                    tensors[id(y)] = tensors[id(inner_y)]
                continue
            new_op = resolve(op, scope)
            if new_op is None:
                outputs = [tensors[id(node.input_tensors[0])]] * len(node.outputs)
            else:
                args, kwargs = node.arguments.fill_in(tensors)
                if (call_training is not None and kwargs.get("training") is None
                        and getattr(new_op, "_call_has_training_arg", False)):
                    kwargs = dict(kwargs, training=call_training)
                if rewrite is not None:
                    args, kwargs = rewrite(node, new_op, args, kwargs)
                outputs = keras.tree.flatten(new_op(*args, **kwargs))
            if after is not None:
                outputs = after(node, outputs)
            for y, value in zip(node.outputs, outputs):
                tensors[id(y)] = value


def flatten(model):
    """``model`` as one flat functional graph (``model`` itself if it is one already).

    Sequential models and functional or Sequential models nested inside (a backbone
    inside a classifier) become one graph of the same layer objects, named as before.
    """
    return replay(model) if needs_flattening(model) else model
