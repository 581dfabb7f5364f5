"""The tf.distribute strategy of a run (``--strategy``), created before other TensorFlow work."""

import json
import os

from pn_tf.pipeline.errors import PipelineError


def check_tf_config(text):
    """Parses ``TF_CONFIG`` or raises a PipelineError saying what is wrong with it."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise PipelineError(f"TF_CONFIG is not valid JSON ({err}); it should look like "
                            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                            '"task": {"type": "worker", "index": 0}}') from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise PipelineError("TF_CONFIG needs a 'cluster' with at least one job and this host's 'task', "
                            '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": 0}}')
    jobs = cluster.get(task.get("type"))
    if not isinstance(jobs, list) or not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(jobs):
        raise PipelineError(f"TF_CONFIG's task {task} does not name one of its cluster's hosts {cluster}")
    return config


def make_strategy(name, cpu_replicas=0):
    """The tf.distribute strategy for ``--strategy`` (created before other TF work)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise PipelineError("--strategy=multi_worker needs TF_CONFIG describing the cluster "
                                "(see https://www.tensorflow.org/guide/distributed_training)")
        check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    if cpu_replicas < 2:
        raise PipelineError("--strategy=mirrored found no GPU; pass --cpu_replicas=N (N >= 2) "
                            "to mirror over N logical CPU devices")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
