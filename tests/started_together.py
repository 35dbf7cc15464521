"""Workers of the tests that start processes at one signal (replicas, torchrun's ranks), kept apart from the
test files so that spawning one imports only what it runs."""


def open_each_at_the_signal(urls: list[str], images: str, start, answers) -> None:
    """Opens every review queue in turn, each at the signal; answers (url, queued count or the error)."""
    from fashion.feedback.store import ReviewStore

    for url in urls:
        start.wait()
        try:
            store = ReviewStore(url, images)
            answers.put((url, store.queued()))
            store.engine.dispose()
        except Exception as err:   # noqa: BLE001 - what each process met is the result
            answers.put((url, f"{type(err).__name__}: {err}"[:200]))


def fill_the_feature_cache_at_the_signal(directory: str, folder: str, start, answers) -> None:
    """One feature cache entry for the products of a Kaggle-layout `folder` (a tiny frozen model), asked for
    at the signal; answers whether this process computed it (`built`) or read it (`hit`), and the inputs."""
    import pandas as pd
    import torch

    from fashion.features import FeatureCache
    from fashion.models import Backbone, LinearHeads, MultiHeadTagger

    torch.manual_seed(0)
    backbone = Backbone("test_efficientnet", image_size=32, freeze="frozen")
    model = MultiHeadTagger(backbone, LinearHeads(MultiHeadTagger.feature_size(backbone, {}), {"gender": 2}), {})
    table = pd.read_csv(f"{folder}/styles.csv")[["id"]]
    table["path"] = [f"{folder}/images/{i}.jpg" for i in table["id"]]
    cache = FeatureCache(directory, runtime="torch")
    start.wait()
    inputs = cache.load_or_compute(model.eval(), backbone.preprocessing, table)
    answers.put((cache.last_status, {name: tensor.numpy() for name, tensor in inputs.items()}))
