"""`fashion-serve bundle=<folder> [port=8000 max_bytes=... ...]`: keys and defaults in conf/serve.yaml."""

from __future__ import annotations

import sys
from typing import Literal

from fashion.cli import tool_config
from fashion.inference.runtime import Runtime


def main(argv: list[str] | None = None) -> None:
    cfg = tool_config("fashion-serve", "serve", sys.argv[1:] if argv is None else argv, serve)
    serve(**cfg)


def serve(bundle: str, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = 10 << 20, max_pixels: int = 40_000_000,
          max_files: int = 16, model_threads: int = 1, top_k: int = 3, runtime: Runtime = "auto",
          log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info") -> None:
    """The REST API and upload page for one bundle, until interrupted."""
    import uvicorn

    from fashion.serving.app import create_app
    from fashion.serving.uploads import UploadLimits

    try:
        app = create_app(bundle, UploadLimits(max_bytes, max_pixels, max_files), model_threads, top_k, runtime)
    except (ValueError, OSError) as err:  # a refused, tampered or missing bundle: say why, no traceback
        sys.exit(f"fashion-serve: cannot load the model: {err}")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":
    main()
