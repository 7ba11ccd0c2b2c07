"""Data-parallel training through each backend's own engine.

- JAX: ``keras.distribution.DataParallel`` over a ``DeviceMesh``; Keras' ``fit``
  shards every batch across the devices.
- TensorFlow: ``tf.distribute.MirroredStrategy``; Keras' ``fit`` splits every
  batch across the replicas. On a machine without GPUs the CPU is split into
  logical devices before TensorFlow starts.
- PyTorch: ``DistributedDataParallel`` (gloo on CPU, nccl on GPUs) in processes
  that torchrun starts, with the model's own compiled Keras optimizer, loss and
  metrics (Keras 3 has no distribution support for torch).

The one interface ``multinet.training`` uses::

    n = resolve_devices(devices=None, distribute=False, batch_size=32)
    launched = maybe_launch_torchrun(n, argv)   # torch, n > 1: runs torchrun, returns its exit code
    engine = get_engine(n)
    with engine.scope():
        model = ...; model.compile(...)
    history = engine.fit(model, train, validation, epochs=..., callbacks=[...], verbose=...)
    if engine.is_chief: write files

``train`` and ``validation`` are ``keras.utils.PyDataset`` objects whose batches
are global batches; each device gets ``batch_size / n`` samples of every batch.
A training batch is cut to a multiple of ``n`` samples (only an epoch's last,
short batch can lose up to ``n - 1`` samples), so that every device gets as many
samples as the others and ``n`` devices train like one device on the same batch.

How many devices there are (``device_count``): JAX counts ``jax.devices()`` (on
CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before Python
starts); TensorFlow and PyTorch count the GPUs, or without GPUs the CPU devices
that may be made: ``MULTINET_CPU_DEVICES`` if set, else the cores this process
may use. Under torchrun it is the number of processes torchrun started.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import sys

import keras

from multinet import backend as _backend

CPU_DEVICES_ENV = "MULTINET_CPU_DEVICES"
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class DistributeError(ValueError):
    """A device request that cannot be met (one line)."""


def _cpu_devices() -> int:
    """The CPU devices TensorFlow or PyTorch may make: $MULTINET_CPU_DEVICES, else the cores."""
    value = os.environ.get(CPU_DEVICES_ENV)
    if value:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise DistributeError(f"{CPU_DEVICES_ENV} must be a positive integer, got {value!r}")
        return count
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def under_torchrun() -> bool:
    """Whether this process is one that torchrun (torch.distributed.run) started."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def device_count() -> int:
    """How many devices the current backend sees for data-parallel training."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        _jax_join_processes()
        return len(jax.devices())
    if backend == "tensorflow":
        return _tf_device_count()
    if backend == "torch":
        if under_torchrun():
            return int(os.environ["WORLD_SIZE"])
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
        return _cpu_devices()
    return 1


_JAX_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
_jax_joined = False


def _jax_join_processes() -> None:
    """Several JAX processes (hosts): ``keras.distribution.initialize()`` once, which
    reads KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and
    KERAS_DISTRIBUTION_PROCESS_ID and calls ``jax.distributed.initialize``."""
    global _jax_joined
    if not _jax_joined and int(os.environ.get(_JAX_PROCESSES, "1") or 1) > 1:
        keras.distribution.initialize()
    _jax_joined = True


def _hint(backend: str) -> str:
    if backend == "jax":
        return (" (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N before "
                "Python starts)")
    if backend in ("tensorflow", "torch"):
        return f" (on CPU: {CPU_DEVICES_ENV}=N)"
    return ""


def resolve_devices(devices: int | None = None, distribute: bool = False, *,
                    batch_size: int | None = None) -> int:
    """The number of devices to train on: ``devices``, every visible one with
    ``distribute=True``, else 1. Raises DistributeError (one line) for more devices
    than exist or a global batch size the device count does not divide."""
    if devices is not None and distribute:
        raise DistributeError("give either --devices N or --distribute, not both")
    if devices is not None and devices < 1:
        raise DistributeError(f"--devices must be at least 1, got {devices}")
    available = device_count()
    n = available if distribute else (devices or 1)
    if n > available:
        on_cpu = not (_backend.gpu_devices() or under_torchrun())
        hint = _hint(keras.backend.backend()) if on_cpu else ""
        raise DistributeError(
            f"{n} devices were asked for but this backend sees {available}{hint}")
    if batch_size is not None and batch_size % n:
        raise DistributeError(
            f"--batch-size {batch_size} is not divisible by the device count {n}")
    if n > 1 and keras.backend.backend() == "tensorflow":
        _tf_split_cpu(n)  # before anything starts TensorFlow
    return n


def maybe_launch_torchrun(n: int, argv: list[str]) -> int | None:
    """On torch with n > 1 devices outside torchrun: run ``argv`` under torchrun
    with n processes and return its exit status. Otherwise None (train here)."""
    if n <= 1 or keras.backend.backend() != "torch" or under_torchrun():
        return None
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--standalone", *argv]
    return subprocess.run(command, check=False).returncode


# --------------------------------------------------------------------------- data


def _batch_size(batch) -> int:
    return int(keras.tree.flatten(batch)[0].shape[0])


class _Shard(keras.utils.PyDataset):
    """The batches of ``dataset`` as one of ``parts`` processes or devices sees them.

    ``even=True`` (training): every batch is cut to a multiple of ``multiple``
    samples, the batches left empty are dropped, and this is the ``part``-th of
    ``parts`` equal contiguous pieces of it. ``even=False`` (validation): nothing
    is cut, the pieces are contiguous and differ by one sample at most.
    """

    def __init__(self, dataset, *, multiple: int = 1, part: int = 0, parts: int = 1,
                 even: bool = True):
        super().__init__(workers=dataset.workers, use_multiprocessing=dataset.use_multiprocessing,
                         max_queue_size=dataset.max_queue_size)
        self.dataset = dataset
        self.multiple, self.part, self.parts, self.even = multiple, part, parts, even
        self._length = None

    def __len__(self):
        if self._length is None:
            length = len(self.dataset)
            if self.even and length and _batch_size(self.dataset[length - 1]) < self.multiple:
                length -= 1  # the last batch is shorter than one sample per device
            self._length = length
        return self._length

    def __getitem__(self, index):
        batch = self.dataset[index]
        size = _batch_size(batch)
        if self.even:
            kept = size - size % self.multiple
            if kept == 0:
                raise DistributeError(
                    f"batch {index} holds {size} samples, fewer than the {self.multiple} devices")
            step = kept // self.parts
            start, stop = self.part * step, (self.part + 1) * step
        else:
            start = self.part * size // self.parts
            stop = (self.part + 1) * size // self.parts
        if (start, stop) == (0, size):
            return batch
        return keras.tree.map_structure(lambda array: array[start:stop], batch)

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


class SingleDevice:
    """Training on one device: Keras' own ``fit``."""

    devices = 1
    rank = 0
    is_chief = True

    def scope(self):
        """Build and compile the model inside this context."""
        return contextlib.nullcontext()

    def fit(self, model, train, validation=None, *, epochs: int, initial_epoch: int = 0,
            callbacks=(), verbose="auto"):
        """``model.fit`` on ``train`` (a ``keras.utils.PyDataset`` whose batches are
        global batches) and returns the ``keras.callbacks.History``."""
        with self.scope():
            return model.fit(self._data(train), validation_data=self._data(validation, True),
                             epochs=epochs, initial_epoch=initial_epoch,
                             callbacks=list(callbacks), verbose=verbose)

    def _data(self, dataset, validation=False):
        return dataset


# --------------------------------------------------------------------------- JAX


class JaxDataParallel(SingleDevice):
    """``keras.distribution.DataParallel`` over the first ``n`` of ``jax.devices()``.

    Keras' JAX trainer places every batch across the mesh's ``batch`` axis (each
    device holds ``batch_size / n`` samples) and keeps the weights replicated;
    XLA all-reduces the gradients inside the compiled step.
    """

    def __init__(self, n: int):
        import jax

        self.devices = n
        # Several processes (jax.distributed.initialize): each feeds its own
        # contiguous part of every global batch.
        self.rank, self._processes = jax.process_index(), jax.process_count()
        self.is_chief = self.rank == 0
        self.distribution = keras.distribution.DataParallel(
            devices=jax.devices()[:n], auto_shard_dataset=False)

    def scope(self):
        return self.distribution.scope()

    def _data(self, dataset, validation=False):
        if dataset is None:
            return None
        # JAX cannot place a batch the device count does not divide: validation
        # batches are cut too.
        return _Shard(dataset, multiple=self.devices, part=self.rank, parts=self._processes)


# --------------------------------------------------------------------------- TensorFlow


def _tf_started() -> bool:
    from tensorflow.python.eager import context

    return bool(getattr(context.context(), "_initialized", True))


def _tf_device_count() -> int:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return len(gpus)
    if _tf_started():
        return len(tf.config.list_logical_devices("CPU"))
    configured = tf.config.get_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0]) or ()
    return max(len(configured), _cpu_devices())


def _tf_split_cpu(n: int) -> None:
    """Without GPUs, split the CPU into ``n`` logical devices (before TensorFlow starts)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    if not _tf_started():
        configured = tf.config.get_logical_device_configuration(cpu) or ()
        if len(configured) < n:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        return
    have = len(tf.config.list_logical_devices("CPU"))
    if have < n:
        raise DistributeError(
            f"TensorFlow already started with {have} CPU device(s), {n} were asked for: "
            "choose the devices before TensorFlow runs anything")


class TensorFlowMirrored(SingleDevice):
    """``tf.distribute.MirroredStrategy`` over ``n`` GPUs, or ``n`` logical CPU devices.

    The model built in ``scope()`` has mirrored variables; Keras' ``fit`` turns the
    PyDataset into a ``tf.data`` pipeline, the strategy gives every replica its
    ``batch_size / n`` samples of each batch and sums the replicas' gradients of
    the loss Keras scaled by ``1 / n``.
    """

    def __init__(self, n: int):
        import tensorflow as tf

        kind = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        if kind == "CPU":
            _tf_split_cpu(n)
        names = [device.name for device in tf.config.list_logical_devices(kind)][:n]
        if len(names) < n:
            raise DistributeError(f"{n} devices were asked for but TensorFlow sees {len(names)}")
        self.devices = n
        self.strategy = tf.distribute.MirroredStrategy(names)

    def scope(self):
        return self.strategy.scope()

    def _data(self, dataset, validation=False):
        if dataset is None or validation:
            return dataset  # the strategy splits short validation batches itself
        return _Shard(dataset, multiple=self.devices)


# --------------------------------------------------------------------------- PyTorch

# Callbacks that change how training goes and only read the logs: every process
# runs them (on the same, reduced epoch logs), so that all make the same
# decisions. Every other callback (checkpoints, CSV/JSON logs, TensorBoard, the
# caller's own) runs in the chief process only.
_EVERY_PROCESS = ("EarlyStopping", "ReduceLROnPlateau", "LearningRateScheduler",
                  "TerminateOnNaN")


class _RestoreOnly(keras.callbacks.Callback):
    """A ``BackupAndRestore`` that restores (weights, optimizer state, the epoch to
    resume at) but never writes or deletes the backup: for non-chief processes."""

    def __init__(self, backup):
        super().__init__()
        self.backup = backup

    def set_model(self, model):
        super().set_model(model)
        self.backup.set_model(model)

    def on_train_begin(self, logs=None):
        self.backup.on_train_begin(logs)


def _process_callbacks(callbacks, is_chief: bool) -> list:
    if is_chief:
        return list(callbacks)
    kept = []
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            kept.append(_RestoreOnly(callback))
        elif isinstance(callback, tuple(getattr(keras.callbacks, n) for n in _EVERY_PROCESS)):
            kept.append(callback)
    return kept


class TorchDistributedDataParallel:
    """``torch.nn.parallel.DistributedDataParallel`` in one of the ``n`` processes
    torchrun started (``gloo`` on CPU, ``nccl`` on GPUs, one GPU per process).

    ``fit`` runs the loop of Keras' guide to distributed training with torch, with
    the model's own compiled optimizer, loss and metrics: every process takes its
    contiguous ``batch_size / n`` samples of each batch (in an order the chief
    shuffles, as Keras' fit does), runs them through the
    DDP-wrapped model, ``loss.backward()`` (DDP averages the gradients over the
    processes) and ``model.optimizer.apply``. Metrics are summed over the
    processes (their state, e.g. total and count) before each epoch's logs, so
    the epoch and ``val_`` logs are those of the whole data. The chief (rank 0)
    shows the progress bar (its own samples' running figures within an epoch) and
    runs every callback; the others run only BackupAndRestore's restore and the
    callbacks in ``_EVERY_PROCESS``. ``model.stop_training`` set in any process
    stops all.
    """

    def __init__(self, n: int):
        import torch
        import torch.distributed as dist

        if not under_torchrun():
            raise DistributeError(
                f"data-parallel training on {n} devices with PyTorch runs under torchrun "
                f"(torchrun --nproc_per_node {n} ...)")
        world = int(os.environ["WORLD_SIZE"])
        if world != n:
            raise DistributeError(f"{n} devices were asked for but torchrun started {world} "
                                  "processes")
        self.devices = n
        self.rank = int(os.environ["RANK"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.is_chief = self.rank == 0
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo")
            atexit.register(dist.destroy_process_group)

    def scope(self):
        return contextlib.nullcontext()

    # -- collectives

    def _any(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(bool(flag))], device="cuda" if self.cuda else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _sum_metrics(self, model) -> dict:
        """Sum every metric's state over the processes; the whole data's results."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for metric in model.metrics:
                for variable in metric.variables:
                    dist.all_reduce(variable.value, op=dist.ReduceOp.SUM)
        return model.get_metrics_result()

    def _batch_order(self, count: int) -> list[int]:
        """The chief's shuffled batch order, as Keras' fit shuffles a PyDataset's
        batches (with Python's ``random``), the same in every process."""
        import torch.distributed as dist

        order = [list(range(count))]
        if self.is_chief:
            random.shuffle(order[0])
        dist.broadcast_object_list(order, src=0)
        return order[0]

    # -- steps

    @staticmethod
    def _tensors(batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        x, y, sample_weight = keras.tree.map_structure(
            lambda a: None if a is None else keras.ops.convert_to_tensor(a), (x, y, sample_weight))
        return x, y, sample_weight, _batch_size(x)

    def _train_step(self, model, ddp, batch):
        import torch

        x, y, sample_weight, size = self._tensors(batch)
        y_pred = ddp(x, training=True)
        model.zero_grad()
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=True)
        model._loss_tracker.update_state(loss, sample_weight=size)
        model.optimizer.scale_loss(loss).backward()  # DDP averages the gradients here
        variables = model.trainable_weights
        with torch.no_grad():
            model.optimizer.apply([v.value.grad for v in variables], variables)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _test_step(self, model, batch):
        import torch

        if _batch_size(batch) == 0:
            return {}
        x, y, sample_weight, size = self._tensors(batch)
        with torch.no_grad():
            y_pred = model(x, training=False)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=False)
            model._loss_tracker.update_state(loss, sample_weight=size)
            return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _evaluate(self, model, validation, callbacks) -> dict:
        model.reset_metrics()
        callbacks.on_test_begin()
        validation.on_epoch_begin()
        for step in range(len(validation)):
            callbacks.on_test_batch_begin(step)
            logs = self._test_step(model, validation[step])
            callbacks.on_test_batch_end(step, logs)
        validation.on_epoch_end()
        logs = self._sum_metrics(model)
        callbacks.on_test_end(logs)
        return {f"val_{name}": value for name, value in logs.items()}

    def fit(self, model, train, validation=None, *, epochs: int, initial_epoch: int = 0,
            callbacks=(), verbose="auto"):
        """Data-parallel training; returns the ``keras.callbacks.History`` (in every
        process; the logs are the same everywhere but the progress bar's)."""
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        train = _Shard(train, multiple=self.devices, part=self.rank, parts=self.devices)
        if validation is not None:
            validation = _Shard(validation, part=self.rank, parts=self.devices, even=False)
        if len(train) == 0:
            raise DistributeError("the training data has no batch to train on")
        # The loss, metrics and optimizer variables, as Keras' fit builds them.
        model._symbolic_build(data_batch=self._tensors(train[0])[:3])
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        ddp = DistributedDataParallel(model, device_ids=[self.local_rank] if self.cuda else None)

        callbacks = keras.callbacks.CallbackList(
            _process_callbacks(callbacks, self.is_chief), add_history=True,
            add_progbar=self.is_chief and verbose != 0, verbose=verbose, epochs=epochs,
            steps=len(train), model=model)
        model.stop_training = False
        callbacks.on_train_begin()
        dist.barrier()  # every process has restored a backup before any writes one
        epoch_logs = {}
        for epoch in range(model._initial_epoch or initial_epoch, epochs):
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            model.train()
            train.on_epoch_begin()
            for step, index in enumerate(self._batch_order(len(train))):
                callbacks.on_train_batch_begin(step)
                logs = self._train_step(model, ddp, train[index])
                callbacks.on_train_batch_end(step, logs)
                if self._any(model.stop_training):
                    model.stop_training = True
                    break
            train.on_epoch_end()
            epoch_logs = self._sum_metrics(model)
            model.eval()
            if validation is not None:
                epoch_logs.update(self._evaluate(model, validation, callbacks))
            callbacks.on_epoch_end(epoch, epoch_logs)
            if self._any(model.stop_training):
                break
        if epochs > 0:
            model.optimizer.finalize_variable_values(model.trainable_weights)
        callbacks.on_train_end(logs=epoch_logs)
        dist.barrier()
        return model.history


def get_engine(n: int = 1):
    """The engine that trains on ``n`` devices of the current backend."""
    if n == 1:
        return SingleDevice()
    backend = keras.backend.backend()
    if backend == "jax":
        return JaxDataParallel(n)
    if backend == "tensorflow":
        return TensorFlowMirrored(n)
    if backend == "torch":
        return TorchDistributedDataParallel(n)
    raise DistributeError(f"data-parallel training is not available on the {backend} backend")
