"""`fashion-serve bundle=<folder> [port=8000 max_bytes=... ...]`: keys and defaults in conf/serve.yaml."""

from __future__ import annotations

import sys

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fashion.config import CONFIG_DIR


def load_settings(argv: list[str]) -> OmegaConf:
    defaults = OmegaConf.load(CONFIG_DIR / "serve.yaml")
    OmegaConf.set_struct(defaults, True)  # a misspelt key is an error, not silently ignored
    try:
        settings = OmegaConf.merge(defaults, OmegaConf.from_dotlist(argv))
        OmegaConf.to_container(settings, throw_on_missing=True)
    except OmegaConfBaseException as err:
        sys.exit(f"fashion-serve: {err.__class__.__name__}: {err}\n(settings and defaults: conf/serve.yaml)")
    return settings


def main() -> None:
    import uvicorn

    from fashion.serving.app import create_app
    from fashion.serving.uploads import UploadLimits

    settings = load_settings(sys.argv[1:])
    limits = UploadLimits(settings.max_bytes, settings.max_pixels, settings.max_files)
    try:
        app = create_app(settings.bundle, limits, settings.model_threads, settings.top_k, settings.runtime)
    except (ValueError, OSError) as err:  # a refused, tampered or missing bundle: say why, no traceback
        sys.exit(f"fashion-serve: cannot load the model: {err}")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
