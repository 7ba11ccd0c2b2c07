"""Published weights: cache, hash checks, atomic downloads, offline mode, mirror.

Downloads run for real, through keras.utils.get_file, against an HTTP server
on 127.0.0.1 that serves files the tests make.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import weight_fixtures as wf

import multinet
from multinet.registry import WeightsSpec
from multinet.weights import WeightsUnavailableError, cached_path, fetch, loaded_weights
from multinet.weights.download import safe_filename

ORIGIN = "https://weights.example.org/models/"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private Keras home: $KERAS_HOME/models is the weights cache."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("MULTINET_OFFLINE", raising=False)
    monkeypatch.delenv("MULTINET_WEIGHTS_MIRROR", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return home / "models"


@pytest.fixture
def server(cache, monkeypatch):
    """An HTTP server on 127.0.0.1 serving ``files`` (bytes, or a function that
    answers the request handler itself); ``hits`` lists requests.
    MULTINET_WEIGHTS_MIRROR points at it."""
    files, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404, "no such file")
                return
            if callable(body):
                body(self)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("MULTINET_WEIGHTS_MIRROR", url + "/mirror")
    files_view = types.SimpleNamespace(url=url, files=files, hits=hits)
    try:
        yield files_view
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def payload(seed=0, size=200_000):
    return np.random.default_rng(seed).bytes(size)


def entry(name, file_hash=None, algorithm=None, **kwargs):
    return WeightsSpec(name="test", url=ORIGIN + name, file_hash=file_hash,
                       hash_algorithm=algorithm, layout="torchvision", preprocessing="torch",
                       input_size=224, **kwargs)


def leftovers(folder):
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_download_md5_then_cache(server, cache):
    data = payload()
    server.files["mirror/tiny_weights.h5"] = data
    spec = entry("tiny_weights.h5", hashlib.md5(data).hexdigest(), "md5")
    assert cached_path(spec) is None
    path = fetch(spec, model_name="tiny")
    assert path == cache / "tiny_weights.h5" and path.read_bytes() == data
    assert server.hits == ["/mirror/tiny_weights.h5"]
    assert cached_path(spec) == path
    assert fetch(spec) == path  # from the cache: the server is not asked again
    assert len(server.hits) == 1
    assert leftovers(cache) == ["tiny_weights.h5"]


def test_download_sha256_prefix(server, cache):
    data = payload(1)
    digest = hashlib.sha256(data).hexdigest()
    name = f"tiny-{digest[:8]}.pth"
    server.files[f"mirror/{name}"] = data
    path = fetch(entry(name, digest[:8], "sha256"))
    assert path.read_bytes() == data and leftovers(cache) == [name]


@pytest.mark.parametrize("algorithm", ["md5", "sha256-prefix"])
def test_corrupt_download_is_deleted(server, cache, algorithm):
    good, bad = payload(2), payload(3)
    if algorithm == "md5":
        name, spec_hash, algo = "tiny.h5", hashlib.md5(good).hexdigest(), "md5"
    else:
        prefix = hashlib.sha256(good).hexdigest()[:8]
        name, spec_hash, algo = f"tiny-{prefix}.pth", prefix, "sha256"
    server.files[f"mirror/{name}"] = bad
    spec = entry(name, spec_hash, algo)
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(spec, model_name="tiny")
    message = str(info.value)
    assert "corrupt" in message and "deleted" in message and spec_hash in message
    assert name in message and ORIGIN + name in message and str(cache / name) in message
    assert "\n" not in message
    assert leftovers(cache) == []  # nothing, not even the temporary download
    assert cached_path(spec) is None


def test_server_down_gives_one_clear_error(cache, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MULTINET_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    spec = entry("down.h5", "0" * 32, "md5")
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(spec, model_name="tiny")
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert "down.h5" in message and ORIGIN + "down.h5" in message
    assert f"http://127.0.0.1:{port}/down.h5" in message
    assert str(cache / "down.h5") in message and "weights=PATH" in message
    assert leftovers(cache) == []


def test_offline_uses_only_the_cache(server, cache, monkeypatch):
    data = payload(4)
    spec = entry("offline.h5", hashlib.md5(data).hexdigest(), "md5")
    server.files["mirror/offline.h5"] = data
    monkeypatch.setenv("MULTINET_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="MULTINET_OFFLINE") as info:
        fetch(spec)
    assert str(cache / "offline.h5") in str(info.value) and server.hits == []
    cache.mkdir(parents=True)
    (cache / "offline.h5").write_bytes(data)
    assert fetch(spec) == cache / "offline.h5" and server.hits == []
    (cache / "offline.h5").write_bytes(payload(5))  # a wrong file put there by hand
    with pytest.raises(WeightsUnavailableError, match="cached copy at .* has md5"):
        fetch(spec)
    monkeypatch.delenv("MULTINET_OFFLINE")
    with pytest.warns(UserWarning, match="replaced by a fresh download"):
        assert fetch(spec).read_bytes() == data  # online, it is downloaded again
    assert len(server.hits) == 1


def test_hashless_download_warns_with_sha256(server, cache):
    data = payload(6)
    server.files["mirror/nohash.h5"] = data
    digest = hashlib.sha256(data).hexdigest()
    with pytest.warns(UserWarning, match=f"no published hash; its sha256 is {digest}"):
        path = fetch(entry("nohash.h5"))
    assert path.read_bytes() == data


@pytest.mark.parametrize("url", [ORIGIN + "..", ORIGIN, ORIGIN + "..%2Fescape.h5",
                                 ORIGIN + "a%5C..%5Cescape.h5", ORIGIN + ".hidden"])
def test_file_names_never_escape_the_cache(server, cache, url):
    spec = WeightsSpec(name="evil", url=url, file_hash=None, hash_algorithm=None,
                       layout="torchvision", preprocessing="torch", input_size=224)
    with pytest.raises(ValueError, match="not a plain file name"):
        fetch(spec)
    with pytest.raises(ValueError, match="not a plain file name"):
        cached_path(spec)
    assert server.hits == [] and leftovers(cache) == []
    for name in ("../x", "/etc/passwd", "a/b", "..", ""):
        with pytest.raises(ValueError):
            safe_filename(name)


def test_create_model_downloads_a_registry_entry(server, cache):
    layers = wf.keras_squeezenet_layers()
    made = cache.parent / "made.h5"
    made.parent.mkdir(parents=True, exist_ok=True)
    wf.write_legacy_h5(made, layers)
    name = "squeezenet_weights_tf_dim_ordering_tf_kernels.h5"
    server.files[f"mirror/{name}"] = made.read_bytes()
    with pytest.warns(UserWarning, match="no published hash"):
        model = multinet.create_model("squeezenet1_1", weights="keras-squeezenet",
                                      classifier_activation=None)
    assert model.input_shape == (None, 227, 227, 3)
    info = loaded_weights(model)
    assert info["entry"] == "keras-squeezenet" and info["preprocessing"] == "caffe"
    np.testing.assert_array_equal(model.get_layer("fire9_expand1x1").kernel,
                                  dict(layers)["fire9/expand1x1"][0])
    spec = multinet.get_model_spec("squeezenet1_1").get_weights("keras-squeezenet")
    assert cached_path(spec) == cache / name
    x = np.zeros((1, 227, 227, 3), "uint8") + np.array([10, 128, 250], "uint8")
    # caffe: RGB to BGR, minus the BGR ImageNet mean
    np.testing.assert_allclose(multinet.preprocess_input(x, model=model)[0, 5, 7],
                               [250 - 103.939, 128 - 116.779, 10 - 123.68], rtol=1e-6)


def test_create_model_offline_error_names_file_url_and_cache(cache, monkeypatch):
    monkeypatch.setenv("MULTINET_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        multinet.create_model("vgg16", weights="imagenet", include_top=False,
                              input_shape=(32, 32, 3))
    message = str(info.value)
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert message.startswith("vgg16 with weights 'keras' needs the weights file " + name)
    assert "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + name in message
    assert str(cache / name) in message and "weights=PATH" in message
    spec = multinet.get_model_spec("squeezenet1_0").get_weights("imagenet")
    with pytest.raises(WeightsUnavailableError, match="squeezenet1_0-b66bff10.pth"):
        multinet.create_model("squeezenet1_0", weights="imagenet")
    assert cached_path(spec) is None


# -- a wrong cached copy, a dropped connection, two processes at once --------------------------


def test_a_wrong_cached_copy_is_reported_and_replaced(server, cache, monkeypatch):
    good, bad = payload(7), payload(8, size=1000)
    name = "cached.h5"
    spec = entry(name, hashlib.md5(good).hexdigest(), "md5")
    cache.mkdir(parents=True)
    (cache / name).write_bytes(bad)
    rejected = (f"the cached copy at {cache / name} has md5 {hashlib.md5(bad).hexdigest()}, "
                f"expected {spec.file_hash}")
    # Offline, or online when the download fails, the error says why the copy was not used.
    monkeypatch.setenv("MULTINET_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(spec, model_name="tiny")
    assert rejected + ", so it was rejected" in str(info.value)
    monkeypatch.delenv("MULTINET_OFFLINE")
    with pytest.raises(WeightsUnavailableError) as info:  # the server has no such file
        fetch(spec, model_name="tiny")
    message = str(info.value)
    assert "HTTP Error 404" in message or "404" in message
    assert message.endswith("weights=PATH") and rejected + ", so it was rejected" in message
    assert "\n" not in message and (cache / name).read_bytes() == bad
    server.files[f"mirror/{name}"] = payload(9)  # a corrupt download: both are said
    with pytest.raises(WeightsUnavailableError, match="is corrupt: .*so it was rejected"):
        fetch(spec, model_name="tiny")
    # Online with the right file served: downloaded again, with a warning.
    server.files[f"mirror/{name}"] = good
    with pytest.warns(UserWarning) as warned:
        path = fetch(spec, model_name="tiny")
    messages = [str(w.message) for w in warned]
    assert [m for m in messages if rejected in m and "replaced by a fresh download" in m], messages
    assert path.read_bytes() == good and leftovers(cache) == [name]
    assert fetch(spec) == path and len(server.hits) == 3  # now trusted: no new download


def dropping(data):
    """A response that promises ``data`` and closes the connection halfway."""
    def serve(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.wfile.flush()
        handler.close_connection = True
    return serve


@pytest.mark.parametrize("published_hash", [True, False])
def test_connection_dropped_mid_file(server, cache, published_hash):
    data = payload(10)
    name = "half.h5"
    server.files[f"mirror/{name}"] = dropping(data)
    spec = entry(name, hashlib.md5(data).hexdigest() if published_hash else None,
                 "md5" if published_hash else None)
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(spec, model_name="tiny")
    message = str(info.value)
    assert "\n" not in message and name in message and ORIGIN + name in message
    assert f"download from {server.url}/mirror/{name}" in message
    assert f"got only {len(data) // 2} out of {len(data)} bytes" in message
    assert leftovers(cache) == [] and cached_path(spec) is None


CHILD = """
import json, sys
from multinet.registry import WeightsSpec
from multinet.weights import fetch
path = fetch(WeightsSpec(**json.loads(sys.argv[1])), model_name="tiny")
print("FETCHED", path)
"""


def test_two_processes_fetch_the_same_file_at_once(server, cache):
    """This process and a child fetch one file at the same time (neither gets a
    byte before both asked), the second still streaming when the first has
    landed in the cache: both succeed, and the cache holds one complete,
    hash-correct file and nothing else."""
    data = payload(11, size=1 << 20)
    name = "shared.h5"
    target = cache / name
    both_asked = threading.Barrier(2, timeout=240)
    seen = []  # per request: did the target exist before its last bytes went out?
    order = iter(range(2))

    def serve(handler):
        index = next(order)
        both_asked.wait()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        step = len(data) // 16
        for start in range(0, len(data) - step, step):
            handler.wfile.write(data[start:start + step])
            handler.wfile.flush()
            time.sleep(0.01)
        if index == 1:  # hold the last bytes until the other copy has landed
            deadline = time.monotonic() + 120
            while not target.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        seen.append((index, target.exists()))
        handler.wfile.write(data[len(data) - step:])

    server.files[f"mirror/{name}"] = serve
    spec = entry(name, hashlib.md5(data).hexdigest(), "md5")
    fields = {k: getattr(spec, k) for k in ("name", "url", "file_hash", "hash_algorithm",
                                            "layout", "preprocessing", "input_size")}
    env = dict(os.environ)
    root = str(Path(multinet.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(fields)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    here = {}

    def fetch_here():
        try:
            here["path"] = fetch(spec, model_name="tiny")
        except Exception as error:  # reported below
            here["error"] = error

    thread = threading.Thread(target=fetch_here, daemon=True)
    thread.start()
    try:
        out, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    thread.join(300)
    assert child.returncode == 0, err[-3000:]
    assert out.splitlines()[-1] == f"FETCHED {target}"
    assert here == {"path": target}
    assert sorted(seen) == [(0, False), (1, True)]  # they overlapped, and one landed first
    assert len(server.hits) == 2
    assert target.read_bytes() == data and leftovers(cache) == [name]


def test_staging_folders_of_killed_processes_are_removed_a_day_later(server, cache):
    data = payload(12)
    server.files["mirror/later.h5"] = data
    cache.mkdir(parents=True)
    old, recent = cache / ".download-old", cache / ".download-recent"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "later.h5").write_bytes(data[:100])
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    fetch(entry("later.h5", hashlib.md5(data).hexdigest(), "md5"))
    assert leftovers(cache) == [".download-recent", "later.h5"]  # another download may own it
