"""The PN search: gate logits trained for accuracy, through a performance predictor.

METHOD.md items 4 and 6-8 (Gao et al., CVPR 2021; supplement sections B-D). Each
step, with the CNN's weights frozen and BN on its moving statistics:

1. one Gumbel sample per gate gives the soft gates ``a_soft`` used in the forward
   pass, a separate sample gives the hard gates ``a_hard`` for the FLOPs term;
2. ``L_cls = CE(f(x; W, a_soft), y)``; ``L_res = s * w * log(max(T(a_hard)/T_total, p) / p)``;
   ``L_P = log(1 / PN(clip(a_soft + nf * N(0, 1), 0, 1)))``;
3. per gate variable, the PN gradient is projected orthogonally to the
   classification gradient (supplement C): ``g_P - (g_L . g_P / |g_L|^2) g_L``, and
   ``g_L + g_P' + g_R`` is applied with the gate optimizer (AdamW);
4. ``(a_hard, accuracy of the gated network on the batch)`` goes into the episodic
   memory, and the PN takes one MAE step on a memory batch drawn by the
   imbalance-aware sampler.

Until the memory holds ``pn_batch_size`` entries, the PN terms are off (the
reference code switches them on once its memory outgrows one PN batch).

Only the gate logits receive gradients from the CNN, so the backward pass needs no
weight gradients. Under ``tf.distribute`` the classification gradient is summed
across replicas before the (non-linear) projection; Keras's optimizer sums what it
is given across replicas again, so the update is divided by the replica count.
Random draws use stateless seeds derived from the step, identical on all replicas.
"""

import keras
import tensorflow as tf

from pn_tf.graph import FlopsModel
from pn_tf.layers import gate_layers, set_gate_mode
from pn_tf.layers.gates import gumbel_noise
from pn_tf.losses import outputs_probabilities
from pn_tf.search.memory import EpisodicMemory
from pn_tf.search.predictor import PREDICTOR_KINDS, build_predictor

PROJECTIONS = ("always", "conflict", "off")


def project(g_p, g_l, mode="always", eps=1e-12):
    """``g_p`` minus its component along ``g_l`` (supplement eq. 1).

    ``mode="conflict"`` projects only when the two disagree (``g_l . g_p < 0``);
    ``"off"`` returns ``g_p`` unchanged.
    """
    if mode == "off":
        return g_p
    dot = tf.reduce_sum(g_l * g_p)
    projected = g_p - dot / (tf.reduce_sum(g_l * g_l) + eps) * g_l
    if mode == "conflict":
        return tf.where(dot < 0.0, projected, g_p)
    return projected


class PNSearch(keras.Model):
    """Trains the gate logits of a gated network with the PN objectives.

    Args:
        network: a functional keras.Model with ChannelGate layers (from the zoo
            or the auto-pruning engine). Its weights are frozen here.
        predictor: str. ``"gru"`` (supplement Table 2), ``"bigru"`` (the official
            code's), ``"linear"`` (the LR baseline), ``"linear_scaled"`` (LR with inputs scaled by
            ``1/sqrt(#gates)``, which does not saturate) or ``"none"`` (DG baseline:
            classification + FLOPs loss only).
        target_reduction: float in (0, 1). Fraction of FLOPs to remove; sets
            ``p = (1 - r) T_all / T_total``. Ignored if ``p`` is given.
        p: float or None. The regularizer's bound directly (the paper's Table 1).
        projection: str. ``"always"`` (reference code), ``"conflict"`` or ``"off"``.
        pn_noise: float. nf, the std of the noise added to the PN's input
            (15 in the reference ResNet script, 3 for MobileNetV2).
        reg_weight: float. w of the log regularizer (2).
        reg_scale: float. The reference code's extra factor on it (2).
        pn_batch_size: int. PN batch drawn from memory (64).
        memory_capacity: int. K (500).
        seed: int. Base of all stateless random seeds.
        cost: the regularizer's cost model: None for the FLOPs T(a) (a
            :class:`~pn_tf.graph.FlopsModel` of ``network``), or a
            :class:`~pn_tf.latency.LatencyModel` for a latency budget L(a); ``target_reduction``
            is then a fraction of it. The ``cost_ratio`` metric is T(a)/T_all (or L(a)/L_all).
    """

    def __init__(self, network, predictor="gru", target_reduction=0.5, p=None, projection="always",
                 pn_noise=15.0, reg_weight=2.0, reg_scale=2.0, pn_batch_size=64,
                 memory_capacity=500, seed=0, cost=None, **kwargs):
        super().__init__(**kwargs)
        if predictor not in PREDICTOR_KINDS:
            raise ValueError(f"predictor must be one of {PREDICTOR_KINDS}, got {predictor!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.network = network
        self.gates = gate_layers(network)
        if not self.gates:
            raise ValueError(f"{network.name} has no ChannelGate layers to search")
        for layer in network.layers:
            layer.trainable = any(layer is g for g in self.gates)
        set_gate_mode(network, "soft")
        self.from_logits = not outputs_probabilities(network)  # a softmax model: probabilities
        self.cost = cost if cost is not None else FlopsModel(network)
        names = [g.gate for g in self.cost.graph.groups]
        if names != [g.name for g in self.gates]:
            raise ValueError(f"the {self.cost.name} model's groups and the gate layers are not in "
                             "the same order")
        self.widths = [g.channels for g in self.gates]
        self.p = float(p) if p is not None else self.cost.p_for_reduction(target_reduction)
        self.predictor_kind = predictor
        self.predictor = build_predictor(predictor, self.widths)
        self.memory = EpisodicMemory(self.widths, capacity=memory_capacity)
        self.projection = projection
        self.pn_noise = float(pn_noise)
        self.reg_weight = float(reg_weight)
        self.reg_scale = float(reg_scale)
        self.pn_batch_size = int(pn_batch_size)
        self.seed = int(seed)
        self.pn_optimizer = None
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "cls_loss", "res_loss", "pn_loss", "pn_mae", "cost_ratio",
                         "batch_acc", "pred_acc", "grad_cos")
        }
        self._eval_trackers = {name: keras.metrics.Mean(name=name)
                               for name in ("loss", "accuracy", "cost_ratio")}
        self.built = True  # every part (network, predictor, memory) is built already

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Everything is built in __init__ and compile(). Keras 3.15's symbolic build first
        # reduces a data batch across replicas, which fails under MultiWorkerMirroredStrategy.
        return

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._eval_trackers.values())

    @property
    def pn_start_step(self):
        """The train step from which the PN terms act (None without a predictor): the memory
        must hold ``pn_batch_size`` entries, and it gains one per ``average_every`` steps."""
        if self.predictor is None:
            return None
        return self.pn_batch_size * self.memory.average_every

    @property
    def budget_ratio(self):
        """The cost ratio T(a)/T_all (or L(a)/L_all) at which the regularizer reaches zero."""
        return self.p * self.cost.prunable / self.cost.total

    def compile(self, gate_optimizer=None, pn_optimizer=None, **kwargs):
        """Gate optimizer (default AdamW 5e-2, wd 1e-2) and PN optimizer (AdamW 1e-3, wd 1e-3)."""
        gate_optimizer = gate_optimizer or keras.optimizers.AdamW(5e-2, weight_decay=1e-2)
        super().compile(optimizer=gate_optimizer, **kwargs)
        self.pn_optimizer = pn_optimizer or keras.optimizers.AdamW(1e-3, weight_decay=1e-3)
        self.optimizer.build(self.gate_logits)
        if self.predictor is not None:
            self.pn_optimizer.build(self.predictor.trainable_variables)

    @property
    def gate_logits(self):
        return [g.logits for g in self.gates]

    def call(self, inputs, training=False):
        return self.network(inputs, training=False)

    def _seed(self, stream, index):
        step = tf.cast(self.optimizer.iterations, tf.int32)
        return tf.stack([tf.constant(self.seed * 7919 + stream * 1009 + index, tf.int32), step])

    def regularizer(self, cost_value):
        ratio = cost_value / self.cost.prunable
        return self.reg_scale * self.reg_weight * tf.math.log(tf.maximum(ratio, self.p) / self.p)

    def train_step(self, data):
        x, y = data[0], data[1]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        context = tf.distribute.get_replica_context()
        logits = self.gate_logits
        for i, gate in enumerate(self.gates):
            gate.noise.assign(gumbel_noise((gate.channels,), self._seed(0, i)))
        hard_noise = [gumbel_noise((g.channels,), self._seed(1, i)) for i, g in enumerate(self.gates)]
        pn_active = tf.cast(self.memory.count >= self.pn_batch_size, tf.float32)
        if self.predictor is None:
            pn_active = tf.zeros([])
        local_batch = tf.shape(y)[0]
        global_batch = tf.cast(local_batch * replicas, tf.float32)

        with tf.GradientTape(persistent=True) as tape:
            a_soft = [g.soft_values() for g in self.gates]
            outputs = self.network(x, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(y, outputs, from_logits=self.from_logits)
            cls_local = tf.reduce_sum(per_example) / global_batch
            a_hard = [g.hard_values(n) for g, n in zip(self.gates, hard_noise)]
            cost_value = self.cost(a_hard)
            res_loss = self.regularizer(cost_value)
            if self.predictor is not None:
                noisy = [
                    tf.clip_by_value(a + self.pn_noise * tf.random.stateless_normal(tf.shape(a), self._seed(2, i)), 0.0, 1.0)
                    for i, a in enumerate(a_soft)
                ]
                predicted = self.predictor([n[None, :] for n in noisy], training=False)[0, 0]
                pn_loss = -tf.math.log(tf.maximum(predicted, 1e-7)) * pn_active
            else:
                predicted, pn_loss = tf.zeros([]), tf.zeros([])

        sources = [v.value for v in logits]  # the tf.Variables behind the Keras variables
        g_cls = context.all_reduce(tf.distribute.ReduceOp.SUM, tape.gradient(cls_local, sources))
        g_res = tape.gradient(res_loss, sources)
        g_pn = tape.gradient(pn_loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        del tape
        updates, dots, norms_l, norms_p = [], 0.0, 0.0, 0.0
        for gl, gp, gr in zip(g_cls, g_pn, g_res):
            updates.append((gl + project(gp, gl, self.projection) + gr) / replicas)
            dots += tf.reduce_sum(gl * gp)
            norms_l += tf.reduce_sum(gl * gl)
            norms_p += tf.reduce_sum(gp * gp)
        self.optimizer.apply(updates, logits)

        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(outputs, -1, output_type=tf.int32),
                                                 tf.cast(y, tf.int32)), tf.float32))
        cls_loss, batch_acc = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [cls_local, correct / global_batch])
        self.memory.push(tf.concat([tf.stop_gradient(a) for a in a_hard], 0), batch_acc)
        pn_mae = self._pn_step(pn_active, replicas)

        total = cls_loss + res_loss + pn_loss
        values = {
            "loss": total, "cls_loss": cls_loss, "res_loss": res_loss, "pn_loss": pn_loss,
            "pn_mae": pn_mae, "cost_ratio": cost_value / self.cost.total,
            "batch_acc": batch_acc, "pred_acc": predicted,
            "grad_cos": dots / (tf.sqrt(norms_l * norms_p) + 1e-12),
        }
        for name, value in values.items():
            self._trackers[name].update_state(value)
        return self._logs(self._trackers)

    def _pn_step(self, pn_active, replicas):
        if self.predictor is None:
            return tf.zeros([])
        archs, accs = self.memory.sample(self.pn_batch_size, self._seed(3, 0))
        variables = self.predictor.trainable_variables
        with tf.GradientTape() as tape:
            predicted = self.predictor(self.memory.split(archs), training=True)[:, 0]
            mae = tf.reduce_mean(tf.abs(predicted - accs))
        grads = tape.gradient(mae, variables)
        self.pn_optimizer.apply([g * pn_active / replicas for g in grads], variables)
        return mae * pn_active

    def test_step(self, data):
        """Accuracy and loss of the network at the noise-free hard gates."""
        x, y = data[0], data[1]
        for gate in self.gates:
            gate.noise.assign(tf.zeros_like(gate.noise))
            gate.mode = "hard"
        try:
            outputs = self.network(x, training=False)
        finally:
            for gate in self.gates:
                gate.mode = "soft"
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, outputs, from_logits=self.from_logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(outputs, -1, output_type=tf.int32),
                                              tf.cast(y, tf.int32)), tf.float32))
        ratio = self.cost([g.hard_values(tf.zeros_like(g.noise)) for g in self.gates]) / self.cost.total
        for name, value in (("loss", loss), ("accuracy", acc), ("cost_ratio", ratio)):
            self._eval_trackers[name].update_state(value)
        return self._logs(self._eval_trackers)

    def _logs(self, trackers):
        logs = {name: t.result() for name, t in trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 reduces step outputs across workers with MEAN over axis 0, which
            # rejects scalars; a length-1 vector reduces to the same scalar.
            logs = {name: tf.reshape(v, [1]) for name, v in logs.items()}
        return logs

    def deterministic_gates(self):
        """The noise-free hard gate vectors ``1[theta + base >= 0]`` as numpy arrays."""
        return [(g.logits.numpy() + g.base >= 0).astype("float32") for g in self.gates]

    @property
    def threshold_cost_ratio(self):
        """T(a)/T_all at the noise-free hard gates (what extraction starts from); no data needed."""
        return float(self.cost([tf.constant(v) for v in self.deterministic_gates()]) / self.cost.total)
