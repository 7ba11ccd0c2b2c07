"""Data-parallel training (multinet.distribute) on simulated CPU devices.

The test that matters: k steps of data-parallel training on N devices with
global batch B end with the same weights as the same k steps on one device with
batch B, and each device saw B / N samples per step. Every multi-device setup
needs a fresh process (XLA_FLAGS before JAX starts, TensorFlow's logical
devices before it starts, torchrun's processes), so tests/distributed_worker.py
trains in subprocesses and the test compares the weights they saved.

The one-device run trains two epochs with keras.callbacks.BackupAndRestore and
keeps the backup of its first epoch; the N-device runs resume from that backup,
so they train the second epoch's 3 steps only (from the restored weights and
optimizer state, at the epoch the backup says) and must end where the one-device
run ended.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from multinet import backend, distribute

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "distributed_worker.py"
GLOBAL_BATCH = 8
BACKEND = keras.backend.backend()
# How many devices each backend is tested with.
DEVICE_COUNTS = {"jax": (2, 4), "tensorflow": (2,), "torch": (2,)}


def run_worker(out: Path, devices: int, *args: str) -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    if BACKEND == "jax":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    else:
        env[distribute.CPU_DEVICES_ENV] = str(devices)
    for name in distribute.TORCHRUN_ENV:  # a fresh start, not a torchrun process
        env.pop(name, None)
    result = subprocess.run([sys.executable, str(WORKER), str(out), "--devices", str(devices),
                             *args], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = np.load(out / "result.npz")
    processes = [json.loads(path.read_text()) for path in sorted(out.glob("batches-*.json"))]
    return {
        "weights": [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)],
        "history": json.loads(str(saved["history"])),
        "processes": processes,
    }


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """Two epochs on one device; the backup as it was after the first."""
    tmp = tmp_path_factory.mktemp("one_device")
    result = run_worker(tmp / "out", 1, "--epochs", "2", "--backup", str(tmp / "backup"),
                        "--keep-first-epoch", str(tmp / "first_epoch"))
    result["first_epoch"] = tmp / "first_epoch"
    return result


@pytest.mark.parametrize("devices", DEVICE_COUNTS[BACKEND])
def test_n_devices_train_like_one_device_with_the_same_global_batch(
        devices, one_device, tmp_path):
    backup = tmp_path / "backup"
    shutil.copytree(one_device["first_epoch"], backup)
    result = run_worker(tmp_path / "out", devices, "--epochs", "2", "--backup", str(backup))

    assert len(one_device["weights"]) == len(result["weights"]) == 6
    for expected, got in zip(one_device["weights"], result["weights"]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The resumed run trained the second epoch only, on the whole data.
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(result["history"][name]) == 1
        np.testing.assert_allclose(result["history"][name][-1], one_device["history"][name][-1],
                                   rtol=1e-5, atol=1e-6)
    # Every device saw its B / N samples of each of the 3 steps.
    per_device = GLOBAL_BATCH // devices
    processes = result["processes"]
    assert all(p["devices"] == devices for p in processes)
    if BACKEND == "torch":
        # torchrun really ran N processes, each taking its slice of every batch.
        assert len(processes) == devices
        assert len({p["pid"] for p in processes}) == devices
        assert all(p["seen"] == [per_device] * 3 for p in processes)
    elif BACKEND == "tensorflow":
        (process,) = processes
        assert process["replicas"] == devices
        assert process["seen"] == [per_device] * (3 * devices)  # one step function per replica
    else:
        (process,) = processes
        assert process["seen"] and set(process["seen"]) == {per_device}  # per compiled step
    assert one_device["processes"][0]["seen"] and set(
        one_device["processes"][0]["seen"]) == {GLOBAL_BATCH}


class Numbered(keras.utils.PyDataset):
    """Batches of 8 numbered samples, the last one of ``last``."""

    def __init__(self, batches: int, last: int):
        super().__init__()
        self.sizes = [8] * (batches - 1) + [last]

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        x = np.arange(self.sizes[index]) + 8 * index
        return x[:, None].astype("float32"), x


def test_every_device_gets_an_equal_contiguous_slice_of_each_batch():
    data = Numbered(3, 6)
    # Training: batches cut to a multiple of the device count.
    shards = [distribute._Shard(data, multiple=4, part=p, parts=4) for p in range(4)]
    assert [len(s) for s in shards] == [3] * 4
    assert [s[0][1].tolist() for s in shards] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [s[2][1].tolist() for s in shards] == [[16], [17], [18], [19]]  # 20, 21 left out
    # A last batch with fewer samples than devices is left out of the epoch.
    assert len(distribute._Shard(Numbered(3, 3), multiple=4)) == 2
    whole = distribute._Shard(data, multiple=4)  # one process feeding every device
    assert whole[2][1].tolist() == [16, 17, 18, 19]
    # Validation on torch: nothing is left out, the slices differ by one at most.
    val = [distribute._Shard(Numbered(2, 5), part=p, parts=2, even=False) for p in range(2)]
    assert [v[1][1].tolist() for v in val] == [[8, 9], [10, 11, 12]]
    assert [len(v) for v in val] == [2, 2]


def test_a_global_batch_the_devices_do_not_divide_is_one_line(monkeypatch):
    monkeypatch.setattr(distribute, "device_count", lambda: 4)
    monkeypatch.setattr(distribute, "_tf_split_cpu", lambda n: None)
    with pytest.raises(distribute.DistributeError) as caught:
        distribute.resolve_devices(3, batch_size=32)
    assert str(caught.value) == "--batch-size 32 is not divisible by the device count 3"
    with pytest.raises(distribute.DistributeError, match="not divisible by the device count 4"):
        distribute.resolve_devices(distribute=True, batch_size=6)
    assert distribute.resolve_devices(4, batch_size=32) == 4
    assert distribute.resolve_devices(distribute=True, batch_size=8) == 4


def test_more_devices_than_exist_is_one_line():
    available = distribute.device_count()
    with pytest.raises(distribute.DistributeError) as caught:
        distribute.resolve_devices(available + 1, batch_size=(available + 1) * 2)
    message = str(caught.value)
    assert message.startswith(
        f"{available + 1} devices were asked for but this backend sees {available}")
    assert "\n" not in message
    if not (backend.gpu_devices() or distribute.under_torchrun()):  # how to get more
        hint = {"jax": "XLA_FLAGS=--xla_force_host_platform_device_count=N"}.get(
            BACKEND, f"{distribute.CPU_DEVICES_ENV}=N")
        assert hint in message


def test_devices_and_distribute_together_is_one_line():
    with pytest.raises(distribute.DistributeError,
                       match=r"^give either --devices N or --distribute, not both$"):
        distribute.resolve_devices(2, distribute=True)
    with pytest.raises(distribute.DistributeError, match="at least 1, got 0"):
        distribute.resolve_devices(0)


def test_one_device_is_keras_fit_and_the_chief():
    assert distribute.resolve_devices() == 1
    engine = distribute.get_engine(1)
    assert (engine.devices, engine.rank, engine.is_chief) == (1, 0, True)
    assert distribute.maybe_launch_torchrun(1, ["-m", "multinet"]) is None


def test_device_count_follows_the_backend_rule(monkeypatch):
    monkeypatch.setenv(distribute.CPU_DEVICES_ENV, "3")
    for name in distribute.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    if BACKEND == "jax":
        import jax

        assert distribute.device_count() == len(jax.devices())
    elif BACKEND == "torch":
        import torch

        expected = torch.cuda.device_count() if torch.cuda.is_available() else 3
        assert distribute.device_count() == expected
        for name, value in zip(distribute.TORCHRUN_ENV, ("5", "0", "0")):
            monkeypatch.setenv(name, value)
        assert distribute.device_count() == 5  # the processes torchrun started
    else:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            pytest.skip("on a GPU machine TensorFlow counts the GPUs")
        tf.constant(1.0)  # TensorFlow has started: its CPU devices are the ones it made
        assert distribute.device_count() == len(tf.config.list_logical_devices("CPU"))


def test_a_bad_cpu_device_count_is_one_line(monkeypatch):
    monkeypatch.setenv(distribute.CPU_DEVICES_ENV, "many")
    with pytest.raises(distribute.DistributeError,
                       match="^MULTINET_CPU_DEVICES must be a positive integer, got 'many'$"):
        distribute._cpu_devices()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's logical CPU devices")
def test_tensorflow_started_with_fewer_cpu_devices_is_one_line():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("on a GPU machine the devices are the GPUs")
    tf.constant(1.0)  # starts TensorFlow with the CPU devices it has
    have = len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(distribute.DistributeError) as caught:
        distribute.get_engine(have + 1)
    assert str(caught.value) == (
        f"TensorFlow already started with {have} CPU device(s), {have + 1} were asked for: "
        "choose the devices before TensorFlow runs anything")


@pytest.mark.skipif(BACKEND != "torch", reason="torchrun and DDP are PyTorch's")
def test_torch_needs_torchrun_for_several_devices(monkeypatch):
    for name in distribute.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distribute.DistributeError, match="runs under torchrun"):
        distribute.get_engine(2)
