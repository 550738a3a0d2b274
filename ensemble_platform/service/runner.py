"""Loading a verified bundle into a decider, and running the app with uvicorn (in the foreground, or in a
thread for tests and benchmarks)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from ensemble_platform.ensemble.runtime import EnsembleRuntime
from ensemble_platform.serving import bundle as bundle_module
from ensemble_platform.serving.bundle import MANIFEST, BundleError


def load_verified_bundle(directory: Path, manifest_sha256: str | None) -> tuple[dict[str, Any], EnsembleRuntime, str]:
    """(manifest, runtime, the manifest's SHA-256) of a bundle whose every file matched its manifest (and the
    manifest `manifest_sha256`, when given) before anything was deserialised."""
    directory = Path(directory)
    manifest_file = directory / MANIFEST
    if not manifest_file.is_file():
        raise BundleError(f"{directory} is not a serving bundle: {MANIFEST} is missing")
    loader = getattr(bundle_module, "load_verified", None)
    if loader is not None:  # loads from the very bytes it verified
        manifest, runtime = loader(directory, manifest_sha256)
    else:
        manifest = bundle_module.verify_bundle(directory, manifest_sha256)
        runtime = bundle_module.load_bundle(directory, manifest_sha256)
    actual = hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    if manifest_sha256 is not None and actual != manifest_sha256:
        raise BundleError(f"{manifest_file} changed while loading: SHA-256 {actual}, expected {manifest_sha256}")
    return manifest, runtime, actual


def serve(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Run until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


class ServerThread:
    """uvicorn in a daemon thread: `start()` returns once it accepts connections; `stop()` shuts it down."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                     lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
