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

A user's layer (a ``keras.layers.Layer`` subclass outside Keras and pn-tf, without a
registered rule) whose ``call()`` is made of Keras layers and ``keras.ops`` is *unrolled*
like a nested model (:func:`unrolled`): its ``call`` runs on fresh symbolic inputs, which
records its inner calls as a functional graph, and that graph is used only if it gives
the layer's outputs on random inputs. A layer that cannot be unrolled stays one opaque
call; :func:`unroll_failure` says why.
"""

import inspect
import logging
import weakref

import keras
import numpy as np

from pn_tf.graph.errors import GraphAnalysisError
from pn_tf.graph.rules import has_rule

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
    """Whether ``model`` is Sequential or holds a nested model or a layer to unroll."""
    if isinstance(model, keras.Sequential):
        return True
    return any(is_nested_model(node.operation) or unrolled(node.operation, node) is not None
               for nodes in graph_of(model)._nodes_by_depth.values() for node in nodes)


# -- unrolling a user's layer ------------------------------------------------------------

_UNROLLED = weakref.WeakKeyDictionary()  # layer -> {id(node): (functional graph or None, why not)}
_FOREIGN_ROOTS = ("keras", "pn_tf", "tensorflow", "tf_keras")
_ATOL, _RTOL = 1e-6, 1e-5  # the unrolled graph must give the layer's outputs within these


def _may_unroll(op):
    """A user's layer: not Keras's, not pn-tf's, not a model, no registered rule."""
    if not isinstance(op, keras.layers.Layer) or isinstance(op, keras.Model):
        return False
    if type(op).__module__.split(".")[0] in _FOREIGN_ROOTS:
        return False
    # A user's subclass of a Keras layer type (Conv2D, Lambda, ...) keeps that type's treatment.
    first_foreign = next(cls for cls in type(op).__mro__ if cls.__module__.split(".")[0] in _FOREIGN_ROOTS)
    return first_foreign is keras.layers.Layer and not has_rule(op)


def unrolled(op, node):
    """The functional graph of user layer ``op``'s call at ``node``, or None.

    None for operations that are not unrolled (Keras's and pn-tf's layers, models, layers
    with a registered rule) and for a user's layer that cannot be (see :func:`unroll_failure`).
    Attempts are cached per layer and call.
    """
    if not _may_unroll(op):
        return None
    calls = _UNROLLED.setdefault(op, {})
    if id(node) not in calls:
        try:
            calls[id(node)] = (_unroll(op, node), "")
        except _CannotUnroll as why:
            calls[id(node)] = (None, str(why))
    return calls[id(node)][0]


def unroll_failure(op):
    """Why the user's layer ``op`` could not be unrolled ("" if it was, or was never tried)."""
    return next((why for _, why in _UNROLLED.get(op, {}).values() if why), "") if _may_unroll(op) else ""


class _CannotUnroll(Exception):
    pass


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _own_values(op):
    """``{attribute: value}`` of the weights ``op`` holds itself (not through a sub-layer) and of
    the constant tensors it keeps in attributes (position ids), which its call may use directly."""
    inner = {id(v) for layer in op._flatten_layers(include_self=False, recursive=True) for v in layer.weights}
    own = {id(v) for v in op.weights if id(v) not in inner}
    values = {}
    for attribute, value in vars(op).items():
        if attribute.startswith("_"):
            continue
        if isinstance(value, keras.Variable) and id(value) in own:
            values[attribute] = value
        elif (keras.ops.is_tensor(value) and not isinstance(value, (keras.KerasTensor, keras.Variable))
              and len(value.shape)):
            values[attribute] = value
    return values


def _trace(op, args, kwargs, anchor, inline=False):
    """``op.call`` on symbolic inputs, its own weights and constants given as :class:`Parameter`
    outputs (so the graph calls them as layers and they stay weights); restores ``op`` after.

    A weight whose first axis is 1 (a class token, position embeddings of shape (1, N, C)) is
    first given repeated to the batch (what ``tile(w, (batch, 1, 1))`` or a broadcast against
    the tokens makes of it); if ``call()`` fails on that, as it is. With ``inline``, the user's
    sub-layers are traced into the graph too, not called (see :class:`_inlined`).
    """
    values = _own_values(op)
    try:
        return keras.tree.flatten(_trace_with(op, args, kwargs, anchor, values, True, inline))
    except Exception:  # noqa: BLE001 - then as they are (the error of this try is the one reported)
        if not any(len(v.shape) >= 2 and v.shape[0] == 1 for v in values.values()):
            raise
        return keras.tree.flatten(_trace_with(op, args, kwargs, anchor, values, False, inline))


def _trace_with(op, args, kwargs, anchor, values, batched, inline=False):
    from pn_tf.layers import Parameter

    for attribute, value in values.items():
        repeat = batched and len(value.shape) >= 2 and value.shape[0] == 1
        parameter = Parameter.holding(value, name=f"{op.name}_{attribute}", batched=repeat)
        object.__setattr__(op, attribute, parameter(anchor))
    try:
        inner = [layer for layer in op._flatten_layers(include_self=False, recursive=False)
                 if _may_unroll(layer)]
        if not inline or not inner:
            try:
                return op.call(*args, **kwargs)
            except Exception:  # noqa: BLE001
                if not inner:
                    raise
        # A user's sub-layer whose call returns what a graph node cannot hold (None beside a
        # tensor: ``return y, attention_scores``), or any with ``inline``, is traced into this
        # one's graph, not called.
        with _inlined(inner, anchor, batched, inline):
            return op.call(*args, **kwargs)
    finally:
        for attribute, value in values.items():
            object.__setattr__(op, attribute, value)


class _inlined:
    """While active, calling one of ``layers`` runs its ``call`` on the symbolic inputs (its own
    weights as Parameters, its own user sub-layers inlined too) instead of adding a node.
    ``inline``: their user sub-layers are always inlined (a call traced at a known batch size,
    whose sub-layers' calls only work at the sizes it gives them: windows of the batch)."""

    def __init__(self, layers, anchor, batched, inline=False):
        self.layers = {id(layer): layer for layer in layers}
        self.anchor, self.batched, self.inline = anchor, batched, inline
        self.patched = {}

    def __enter__(self):
        for layer in self.layers.values():
            cls = type(layer)
            if cls in self.patched:
                continue
            original = cls.__call__
            self.patched[cls] = original
            inlined = self

            def call(layer_self, *args, _original=original, **kwargs):
                if id(layer_self) not in inlined.layers:
                    return _original(layer_self, *args, **kwargs)
                values = _own_values(layer_self)
                if getattr(layer_self, "_call_has_training_arg", False) and kwargs.get("training") is None:
                    kwargs = dict(kwargs, training=False)
                return _trace_with(layer_self, args, kwargs, inlined.anchor, values, inlined.batched,
                                   inlined.inline)

            cls.__call__ = call
        return self

    def __exit__(self, *exc):
        for cls, original in self.patched.items():
            cls.__call__ = original
        return False


# The batch size a layer's call is traced at when it does arithmetic on the batch size, which
# the symbolic None does not allow (``ops.shape(windows)[0] // windows_per_image``). A prime, so
# that a size is read as batch-dependent only if it is a multiple of it.
_SENTINEL_BATCH = 1009


def _batch_free(inner, sentinel=None):
    """``inner`` with the shape arguments that ``call()`` read off the batch size made batch-free,
    or ``inner`` itself if there are none:

    * ``reshape(x, (batch, -1, C))`` becomes ``reshape(x, (-1, N, C))`` (N from the static sizes);
    * ``tile(w, (batch, 1, 1))`` of a weight that its :class:`Parameter` repeats to the batch
      already (``batched``: a class token) repeats it once.

    The batch is the symbolic None, or, for a call traced at the batch size ``sentinel``, any
    multiple of it as a reshape's first size (``(batch * windows, 7, 7, C)`` becomes ``(-1, 7,
    7, C)``); that graph's inputs are then made batch-free too.
    Anything else that uses the batch size stays as it is (and fails the output check).
    A reshape whose input's sizes are only known once an earlier one is made batch-free
    (``reshape(x, (batch, -1, C))`` then ``reshape(k, (batch, -1, heads, C // heads))``: a
    sequence reduction before attention) is made batch-free on the next pass.
    """
    for _ in range(len(inner.operations)):
        swap = _batch_free_swaps(inner, sentinel)
        if not swap:
            break
        inner = replay(inner, substitute=lambda op, swap=swap: swap.get(id(op), op))
    if sentinel is not None:
        inner = replay(inner, batch=None)
    return inner


def _batch_free_swaps(inner, sentinel):
    """``{id(op): batch-free copy}`` for :func:`_batch_free`'s ops whose input sizes are known."""
    from pn_tf.layers import Parameter
    from pn_tf.graph.rules import keras_op_class

    reshape, tile = keras_op_class("reshape"), keras_op_class("tile") or type(None)
    swap = {}
    for op in inner.operations:
        for node in op._inbound_nodes:
            if reshape is not None and isinstance(op, reshape):
                in_shape = node.input_tensors[0].shape
                fixed = (_static_reshape(in_shape, op.newshape) if _has_none(op.newshape)
                         else _sentinel_reshape(in_shape, op.newshape, sentinel))
                if fixed is not None:
                    swap[id(op)] = reshape(fixed, name=op.name)
            elif isinstance(op, tile) and _batch_repeat(op.repeats, sentinel):
                source = node.input_tensors[0]._keras_history[0]
                if isinstance(source, Parameter) and source.batched:  # repeated to the batch already
                    swap[id(op)] = tile((1,) + tuple(op.repeats[1:]), name=op.name)
    return swap


def _batch_repeat(repeats, sentinel):
    """Whether ``tile`` ``repeats`` repeat the first axis by the batch size."""
    if not isinstance(repeats, (tuple, list)) or not repeats:
        return False
    return repeats[0] is None or (sentinel is not None and repeats[0] == sentinel)


def _sentinel_reshape(in_shape, newshape, sentinel):
    """A reshape traced at batch ``sentinel`` whose first size is a multiple of it (the batch,
    maybe folded with windows) as ``[-1, ...]`` with its other -1 resolved; else None."""
    if sentinel is None or not isinstance(newshape, (tuple, list)) or not newshape:
        return None
    first, rest = newshape[0], list(newshape[1:])
    if (not isinstance(first, (int, np.integer)) or first <= 0 or first % sentinel
            or any(d is None for d in in_shape) or any(d is None for d in rest) or rest.count(-1) > 1):
        return None
    total = int(np.prod([int(d) for d in in_shape]))
    known = int(first) * int(np.prod([int(d) for d in rest if d != -1]))
    if -1 in rest:
        if total % known:
            return None
        rest[rest.index(-1)] = total // known
    return [-1] + [int(d) for d in rest]


def _has_none(shape):
    return isinstance(shape, (tuple, list)) and any(d is None for d in shape)


def _static_reshape(in_shape, newshape):
    """``newshape`` with its None (the batch) as -1 and its own -1 resolved, or None if it cannot."""
    newshape = list(newshape)
    if newshape[0] is not None or any(d is None for d in newshape[1:]) or any(d is None for d in in_shape[1:]):
        return None
    size = int(np.prod([int(d) for d in in_shape[1:]]))
    known = int(np.prod([d for d in newshape[1:] if d != -1]))
    if -1 in newshape[1:]:
        if newshape[1:].count(-1) > 1 or size % known:
            return None
        newshape[newshape.index(-1, 1)] = size // known
    return [-1] + [int(d) for d in newshape[1:]]


class _unique_names:
    """Distinct names, while the graph of ``outputs`` is made a keras.Model, for the layers of it that
    share one (two inlined blocks' "ln_1"); their names are given back after. Replay later names
    the flat model's copies by scope (:class:`_Names`)."""

    def __init__(self, outputs):
        self.renamed = []
        seen, stack, operations = set(), list(outputs), []
        while stack:
            t = stack.pop()
            history = getattr(t, "_keras_history", None)
            if history is None or id(history[0]) in seen:
                continue
            seen.add(id(history[0]))
            operations.append(history[0])
            stack.extend(history[0]._inbound_nodes[history[1]].input_tensors)
        taken = {}
        for operation in operations:
            taken.setdefault(operation.name, []).append(operation)
        self.clashes = [ops for ops in taken.values() if len(ops) > 1]
        self.names = {o.name for o in operations}

    def __enter__(self):
        for ops in self.clashes:
            for k, operation in enumerate(ops[1:], 2):
                name = f"{operation.name}_{k}"
                while name in self.names:
                    name += "_"
                self.names.add(name)
                self.renamed.append((operation, operation.name))
                operation.name = name
        return self

    def __exit__(self, *exc):
        for operation, name in self.renamed:
            operation.name = name
        return False


def _constant_output(value, op, k, anchor):
    """An output of ``call()`` that does not depend on its inputs (``ops.empty((0, n, c))`` where
    no hidden states are asked for) as the output of a constant :class:`Parameter`."""
    from pn_tf.layers import Parameter

    if isinstance(value, keras.KerasTensor) or not keras.ops.is_tensor(value):
        return value
    return Parameter.holding(value, name=f"{op.name}_output_{k}")(anchor)


def _symbolic_call(op, node, batch):
    """``(inputs, outputs)`` of ``op.call`` traced on fresh symbolic inputs of batch size ``batch``
    (a known one: with the user's sub-layers inlined)."""
    fresh, inputs = {}, []
    for t in node.input_tensors:
        if id(t) not in fresh:
            fresh[id(t)] = keras.Input(batch_shape=(batch,) + tuple(t.shape[1:]), dtype=t.dtype)
            inputs.append(fresh[id(t)])
    args, kwargs = node.arguments.fill_in(fresh)
    return inputs, _trace(op, args, kwargs, inputs[0], inline=batch is not None)


def _unroll(op, node):
    sentinel = None
    try:
        inputs, outputs = _symbolic_call(op, node, None)
    except Exception as error:  # noqa: BLE001 - whatever call() does on symbolic inputs
        try:  # arithmetic on the batch size (windows of a Swin block): trace at a known one
            inputs, outputs = _symbolic_call(op, node, _SENTINEL_BATCH)
            sentinel = _SENTINEL_BATCH
        except Exception:  # noqa: BLE001 - the first error is the one to report
            raise _CannotUnroll(f"its call() fails on symbolic inputs (Python branching on a tensor's "
                                f"value, or a backend-specific op?): {_first_line(error)}") from None
    outputs = [_constant_output(y, op, k, inputs[0]) for k, y in enumerate(outputs)]
    if not all(isinstance(y, keras.KerasTensor) for y in outputs):
        raise _CannotUnroll("its call() returns values that are not Keras tensors (backend-specific ops?)")
    if len(outputs) != len(node.outputs):
        raise _CannotUnroll(f"its call() gives {len(outputs)} outputs on symbolic inputs, "
                            f"{len(node.outputs)} in the model")
    try:
        with _unique_names(outputs):
            inner = keras.Model(inputs, outputs, name=op.name)
        inner = _batch_free(inner, sentinel)
    except Exception as error:  # noqa: BLE001
        raise _CannotUnroll(f"its inner calls do not form a graph: {_first_line(error)}") from None
    _check_weights(op, inner)
    _check_outputs(op, node, inputs, inner)
    return inner


def _check_weights(op, inner):
    """Every weight must belong to a layer of the unrolled graph (a weight used directly in
    keras.ops would become a frozen constant there). A weight of ``op``'s own that its call did
    not use (a mask token where no mask is given) is not needed."""
    held = {id(v) for layer in inner.layers for v in layer.weights}
    held |= {id(v) for layer in op._flatten_layers(include_self=True, recursive=True)
             for v in _own_values(layer).values()}
    loose = [v.path or v.name for v in op.weights if id(v) not in held]
    for nodes in inner._nodes_by_depth.values():
        for n in nodes:
            loose += [v.path or v.name for v in keras.tree.flatten((n.arguments.args, n.arguments.kwargs))
                      if isinstance(v, keras.Variable) and (v.path or v.name) not in loose]
    if loose:
        raise _CannotUnroll(f"it uses weights directly in keras.ops ({', '.join(loose)}); unrolled they "
                            "would be frozen constants")


def _random_like(x, rng):
    shape = (2,) + tuple(8 if d is None else int(d) for d in x.shape[1:])
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "float" in dtype:
        return rng.uniform(-1.0, 1.0, shape).astype(dtype)
    return rng.randint(0, 2, shape).astype(dtype)


def _check_outputs(op, node, inputs, inner):
    """The unrolled graph must give ``op``'s outputs on random inputs (inference mode)."""
    rng = np.random.RandomState(0)
    values = {}
    for t in node.input_tensors:
        if id(t) not in values:
            values[id(t)] = _random_like(t, rng)
    args, kwargs = node.arguments.fill_in(values)
    try:
        if getattr(op, "_call_has_training_arg", False) and kwargs.get("training") is None:
            kwargs = dict(kwargs, training=False)
        expected = keras.tree.flatten(op(*args, **kwargs))
        got = keras.tree.flatten(inner([values[id(t)] for t in _unique(node.input_tensors)], training=False))
    except Exception as error:  # noqa: BLE001
        raise _CannotUnroll(f"its unrolled graph cannot be run: {_first_line(error)}") from None
    for e, g in zip(expected, got):
        e, g = np.asarray(keras.ops.convert_to_numpy(e)), np.asarray(keras.ops.convert_to_numpy(g))
        scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
        if e.shape != g.shape or not np.allclose(g, e, rtol=_RTOL, atol=_ATOL * scale):
            raise _CannotUnroll("its unrolled graph does not give its outputs on random inputs "
                                "(state, randomness or Python-level logic in call()?)")


def _unique(tensors):
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _as_constant(value):
    """A backend tensor computed inside an unrolled call (``keras.ops.ones(...)``) as a numpy
    constant, as keras.ops constants are everywhere else (rules slice numpy constants)."""
    if isinstance(value, (keras.KerasTensor, keras.Variable)) or not keras.ops.is_tensor(value):
        return value
    return np.asarray(keras.ops.convert_to_numpy(value))


def layer_config(layer):
    """``layer.get_config()``; for a layer whose automatic config fails (built with a dtype policy
    object) and whose constructor takes only the base Layer's keyword arguments (Identity), the
    base Layer's config, which rebuilds it exactly. Raises NotImplementedError otherwise."""
    try:
        return layer.get_config()
    except NotImplementedError:
        parameters = inspect.signature(type(layer).__init__).parameters.values()
        if layer.weights or any(p.kind != p.VAR_KEYWORD for p in list(parameters)[1:]):
            raise
        return {"name": layer.name, "trainable": layer.trainable,
                "dtype": keras.dtype_policies.serialize(layer.dtype_policy)}


def _renamed_copy(layer, name):
    """A copy of built ``layer`` named ``name`` (weights copied by the caller once it is built)."""
    try:
        config = layer_config(layer)
    except NotImplementedError:
        raise GraphAnalysisError(f"layer '{layer.name}' ({type(layer).__name__}) must be renamed in the "
                                 "flat model (its name is taken) but has no get_config()") from None
    return layer.__class__.from_config(dict(config, name=name))


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
        if not layer.built:  # a fresh copy nothing calls yet (a substitute): renamed in place
            layer.name = name
            clone = layer
        else:
            clone = _renamed_copy(layer, name)
            self.pairs.append((layer, clone))
        self.renamed[id(layer)] = clone
        self.owner[name] = clone
        self.messages.append(f"layer '{layer.name}' of '{scope}' is named '{name}' in the flat model "
                             "(its name was taken)")
        return clone


def replay(model, substitute=None, rewrite=None, after=None, name=None, batch="same"):
    """A new flat functional model that calls ``model``'s operations again.

    Args:
        model: a functional or Sequential keras.Model.
        substitute: ``op -> op`` (called once per operation): what to call instead, or
            None to skip the call (its first input passes through).
        rewrite: ``(node, op, args, kwargs) -> (args, kwargs)``: the arguments of one call.
        after: ``(node, outputs) -> outputs``: wraps the new outputs of an original node.
        name: the new model's name (default: ``model``'s).
        batch: the new inputs' batch size: ``"same"`` as ``model``'s, None (unknown) or a number.

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
        shape = tuple(x.shape) if batch == "same" else (batch,) + tuple(x.shape[1:])
        tensors[id(x)] = keras.Input(batch_shape=shape, dtype=x.dtype, name=layer.name)
        names.owner.setdefault(layer.name, layer)
    _run(graph, tensors, resolve, rewrite, after, training=None, scope="", inlined=False)
    for message in names.messages:
        log.warning(message)
    for original, clone in names.pairs:
        clone.set_weights(original.get_weights())
    inputs = keras.tree.map_structure(lambda x: tensors[id(x)], graph._inputs_struct)
    outputs = keras.tree.map_structure(lambda x: tensors[id(x)], graph._outputs_struct)
    return keras.Model(inputs, outputs, name=name or model.name)


def _run(graph, tensors, resolve, rewrite, after, training, scope, inlined):
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.is_input:
                continue
            op = node.operation
            explicit = node.arguments.kwargs.get("training")
            call_training = explicit if explicit is not None else training
            nested = is_nested_model(op)
            inner = graph_of(op) if nested else unrolled(op, node)
            if inner is not None:
                outer = node.input_tensors if nested else _unique(node.input_tensors)
                for x, value in zip(keras.tree.flatten(inner._inputs_struct), outer):
                    tensors[id(x)] = tensors[id(value)]
                _run(inner, tensors, resolve, rewrite, after, call_training, op.name, inlined or not nested)
                for y, inner_y in zip(node.outputs, keras.tree.flatten(inner._outputs_struct)):
                    tensors[id(y)] = tensors[id(inner_y)]
                continue
            new_op = resolve(op, scope)
            if new_op is None:
                outputs = [tensors[id(node.input_tensors[0])]] * len(node.outputs)
            else:
                args, kwargs = node.arguments.fill_in(tensors)
                if inlined:
                    args = [_as_constant(a) for a in args]
                    kwargs = {k: _as_constant(v) for k, v in kwargs.items()}
                if (call_training is not None and kwargs.get("training") is None
                        and getattr(new_op, "_call_has_training_arg", False)):
                    kwargs = dict(kwargs, training=call_training)
                if "training" in kwargs and not _takes_training(new_op):
                    # a layer whose call takes no training argument, given one (keras-hub's
                    # HGNetV2 passes it to an Identity): kept in the node, calling the new
                    # model again fails in the layer's compute_output_spec
                    kwargs = {k: v for k, v in kwargs.items() if k != "training"}
                if rewrite is not None:
                    args, kwargs = rewrite(node, new_op, args, kwargs)
                outputs = keras.tree.flatten(new_op(*args, **kwargs))
            if after is not None:
                outputs = after(node, outputs)
            for y, value in zip(node.outputs, outputs):
                tensors[id(y)] = value


def _takes_training(op):
    """Whether ``op``'s call accepts a ``training`` argument (by name or in ``**kwargs``); ops
    that are not layers are left as they were called."""
    signature = getattr(op, "_call_signature", None)
    if signature is None:
        return True
    return getattr(op, "_call_has_training_arg", False) or any(
        p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def flatten(model):
    """``model`` as one flat functional graph (``model`` itself if it is one already).

    Sequential models and functional or Sequential models nested inside (a backbone
    inside a classifier) become one graph of the same layer objects, named as before; a
    user's layer made of Keras layers and keras.ops is unrolled into them (:func:`unrolled`).
    """
    return replay(model) if needs_flattening(model) else model


def batch_rows(model):
    """``{id(tensor): k}`` for the tensors of flat ``model`` whose batch axis holds k > 1 rows per
    example (windows of an image folded into the batch: ``reshape(x, (-1, 7 * 7, C))``), read off
    the model replayed at batch size 1; empty when no keras.ops reshape, transpose or unstack
    could move sizes into the batch axis. MAC counts multiply a call's per-row count by its
    output's k; a latency unit is timed on k rows of its input."""
    from pn_tf.graph.rules import keras_op_class

    movers = tuple(c for c in (keras_op_class(n) for n in ("reshape", "transpose", "unstack")) if c)
    if not movers or not any(isinstance(op, movers) for op in model.operations):
        return {}
    rows = {}

    def after(node, outputs):
        for y, fixed in zip(node.output_tensors, outputs):
            if len(y.shape) and y.shape[0] is None and len(fixed.shape) and isinstance(fixed.shape[0], int) \
                    and fixed.shape[0] > 1:
                rows[id(y)] = int(fixed.shape[0])
        return outputs

    try:
        replay(model, after=after, batch=1)
    except Exception as error:  # noqa: BLE001 - counts stay per row, said once
        log.warning("pn-tf could not replay '%s' at batch size 1 to find calls that fold windows into "
                    "the batch (%s); their MACs are counted per batch row", model.name, _first_line(error))
        return {}
    return rows
