"""`fashion-serve bundle=<folder> [port=8000 max_bytes=... ...]`: keys and defaults in conf/serve.yaml."""

from __future__ import annotations

import socket
import sys
from typing import Literal

from fashion.cli import Refused, tool_config
from fashion.config import refused_credentials
from fashion.inference.runtime import Runtime
from fashion.validation import AtLeastOne, Port


def main(argv: list[str] | None = None) -> None:
    cfg = tool_config("fashion-serve", "serve", sys.argv[1:] if argv is None else argv, serve)
    serve(**cfg)


def serve(bundle: str, host: str = "127.0.0.1", port: Port = 8000, max_bytes: AtLeastOne = 10 << 20,
          max_pixels: AtLeastOne = 40_000_000, max_files: AtLeastOne = 16, model_threads: AtLeastOne = 1, top_k: AtLeastOne = 3, runtime: Runtime = "auto",
          log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info",
          tracking_uri: str | None = None, model_cache: str = "model_cache", api_key: str | None = None,
          review_queue: bool = True, review_url: str = "sqlite:///review/review.db", review_images: str = "review/images",
          review_max_queued: AtLeastOne | None = 10_000, review_for: list[str] | None = None, drift_window: AtLeastOne = 500,
          open_predictions: bool = True) -> None:
    """The REST API and upload page for one bundle or registry alias, until interrupted."""
    import uvicorn
    from mlflow.exceptions import MlflowException
    from uvicorn.config import STARTUP_FAILURE

    from fashion.feedback.store import ReviewStore
    from fashion.serving.app import SettingRefused, create_app
    from fashion.serving.uploads import UploadLimits

    with listening_socket(host, port) as listener:   # held from before the model's load until the server ends
        try:
            app = create_app(bundle, UploadLimits(max_bytes, max_pixels, max_files), model_threads, top_k, runtime,
                             tracking_uri, model_cache, api_key, None, drift_window, open_predictions, review_for)
        except SettingRefused as err:   # a key that does not fit the model (review_for naming an attribute it does not tag)
            raise Refused("fashion-serve", str(err)) from None
        except (ValueError, OSError, MlflowException) as err:  # a refused, tampered or missing model: say why, no traceback
            raise Refused("fashion-serve", f"cannot load the model: {refused_credentials(tracking_uri, err) or err}") from None
        try:   # after the model: a mistyped bundle must not leave an empty queue (review/review.db) behind
            app.state.review = ReviewStore(review_url, review_images, review_max_queued) if review_queue else None
        except (ValueError, OSError) as err:
            raise Refused("fashion-serve", f"cannot open the review queue: {err}") from None
        bound = listener.getsockname()[1]   # port=0: the one the system chose
        print(f"fashion-serve: serving on http://{f'[{host}]' if ':' in host else host}:{bound} (Ctrl+C stops)",
              file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound, log_level=log_level))
        try:   # as uvicorn.run() ends: Ctrl+C (raised again once uvicorn has shut down) quiet, a start that failed 3
            server.run(sockets=[listener])
        except KeyboardInterrupt:
            pass
        if not server.started:
            raise SystemExit(STARTUP_FAILURE)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, listening before the model loads (seconds, or minutes from a registry). uvicorn binds
    only once the app has started: a taken port was found after the load, and a port checked free before it could
    be taken during it by a second server, so the first failed after loading. Connections made during the load
    wait in the backlog. SO_REUSEADDR, as uvicorn sets it: a port in TIME_WAIT is not refused."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise Refused("fashion-serve", f"host={host}: {err.strerror}") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen()
    except OSError as err:
        listener.close()
        raise Refused("fashion-serve", f"cannot listen on {host}:{port}: {err.strerror} (another server there? "
                                       "give another port=)") from None
    return listener


if __name__ == "__main__":
    main()
