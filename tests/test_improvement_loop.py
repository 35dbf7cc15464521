"""The improvement loop: registry, review queue and feedback, retraining on corrections, the promotion
gate, hot reload under load, and /metrics with label drift."""

import io
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir
from PIL import Image

from fashion.config import CONFIG_DIR
from fashion.data.vocab import LabelVocabulary
from fashion.feedback.export import ID_BASE, export_feedback
from fashion.feedback.store import ReviewStore, UnknownImage
from fashion.serving.app import create_app
from fashion.serving.monitoring import Monitor, psi
from tests.conftest import tiny_overrides

KEY = "s3cret-key"


def store_urls(tmp_path: Path) -> list[str]:
    """SQLite always; PostgreSQL too where CI started one (FASHION_TEST_POSTGRES_URL)."""
    urls = [f"sqlite:///{tmp_path / 'review.db'}"]
    if os.environ.get("FASHION_TEST_POSTGRES_URL"):
        urls.append(os.environ["FASHION_TEST_POSTGRES_URL"])
    elif os.environ.get("FASHION_REQUIRE_POSTGRES"):
        pytest.fail("FASHION_REQUIRE_POSTGRES is set but FASHION_TEST_POSTGRES_URL names no server")
    return urls


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


PREDICTIONS = {"gender": {"label": "Men", "confidence": 0.99, "status": "accepted"},
               "articleType": {"label": "Tshirts", "confidence": 0.41, "status": "needs_review"}}


def test_the_same_photo_saved_by_two_requests_at_once_is_stored_whole_by_both(tmp_path, monkeypatch):
    """Both requests wrote one temporary name: the first to rename it took the second's file from under it
    (FileNotFoundError, the photo's review lost), and across processes one could rename the other's half."""
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    data, first_wrote, second_done = jpeg((10, 200, 10)), threading.Event(), threading.Event()
    real_replace = os.replace

    def replace(source, target):   # the first request pauses between its write and its rename
        if not first_wrote.is_set():
            first_wrote.set()
            assert second_done.wait(10)
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "rename", lambda self, target: replace(self, target))   # the same pause, for a rename
    results = []
    first = threading.Thread(target=lambda: results.append(store.save_image(data, "JPEG")))
    first.start()
    assert first_wrote.wait(10)
    results.append(store.save_image(data, "JPEG"))   # the second request, whole, while the first waits
    second_done.set()
    first.join(10)
    assert len(results) == 2 and results[0] == results[1]
    assert (store.images / results[0][1]).read_bytes() == data and not list(store.images.rglob("*.tmp"))


def test_review_store_queues_each_photo_once_and_keeps_the_latest_correction(tmp_path):
    for index, url in enumerate(store_urls(tmp_path)):
        store = ReviewStore(url, tmp_path / f"images{index}")
        from sqlalchemy import text

        with store.engine.begin() as connection:   # a server database outlives the test: start empty
            connection.execute(text("DELETE FROM corrections"))
            connection.execute(text("DELETE FROM review_items"))
        red, blue = jpeg((200, 30, 30)), jpeg((30, 40, 190))
        first = store.enqueue(red, "JPEG", PREDICTIONS, "tagger/1", "red.jpg")
        assert store.enqueue(red, "JPEG", PREDICTIONS, "tagger/2", "red-again.jpg") == first   # same pixels, one item
        store.enqueue(blue, "JPEG", PREDICTIONS, "tagger/1", "blue.jpg")
        assert store.queued() == 2
        item = store.next_item()
        assert item["id"] == first and item["model_version"] == "tagger/2" and item["needs_review"] == ["articleType"]
        assert store.image_path(item["image_sha256"]).read_bytes() == red          # content-addressed, intact
        store.record(item["image_sha256"], {"articleType": "Shirts"}, "ana")
        store.record(item["image_sha256"], {"articleType": "Tops", "gender": "Women"}, "ben")   # a second look wins
        assert store.queued() == 1 and store.next_item()["filename"] == "blue.jpg"
        [(item_id, path, labels, predictions, filename)] = list(store.corrections())
        assert item_id == first and labels == {"articleType": "Tops", "gender": "Women"} and path.read_bytes() == red
        assert filename == "red-again.jpg"                                           # as last uploaded
        with pytest.raises(UnknownImage):
            store.record("0" * 64, {"gender": "Men"})


def test_more_corrections_than_a_database_takes_values_in_one_statement_are_all_read(tmp_path):
    """The export fetched the corrected items by a list of every corrected hash, one bound value each: PostgreSQL takes
    65,535 in a statement, so a queue with more corrections could not be exported. SQLite, its limit lowered to 999,
    stands in (1,200 corrections)."""
    import sqlite3
    from datetime import UTC, datetime

    from sqlalchemy import event, insert

    from fashion.feedback.store import Correction, ReviewItem

    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    event.listen(store.engine, "connect", lambda connection, _: connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    store.engine.dispose()   # the connections opened so far had the default limit
    now, n = datetime.now(UTC), 1200
    with store.engine.begin() as connection:   # executemany binds a row at a time: under the limit
        connection.execute(insert(ReviewItem), [dict(id=i, image_sha256=f"{i:064x}", image_file=f"{i}.jpg", predictions={},
                                                     needs_review=[], status="reviewed", created_at=now) for i in range(1, n + 1)])
        connection.execute(insert(Correction), [dict(image_sha256=f"{i:064x}", item_id=i, labels={"gender": "Men"},
                                                     created_at=now) for i in range(1, n + 1)])
    assert [c[0] for c in store.corrections()] == list(range(1, n + 1))


def test_an_over_long_upload_name_fits_the_queue_and_an_over_long_reviewer_is_a_422(trained, tmp_path):
    """PostgreSQL refused a filename over the column's 500 characters (the client names its upload) and a
    reviewer over 200: the photo's review was lost, and POST /v1/feedback answered 500."""
    from sqlalchemy import text

    auth, long_name = {"X-API-Key": KEY}, "x" * 600 + ".jpg"
    for index, url in enumerate(store_urls(tmp_path)):
        store = ReviewStore(url, tmp_path / f"images{index}")
        with store.engine.begin() as connection:   # a server database outlives the test: start empty
            connection.execute(text("DELETE FROM corrections"))
            connection.execute(text("DELETE FROM review_items"))
        assert store.enqueue(jpeg((10, 20, 30)), "JPEG", PREDICTIONS, "tagger/" + "9" * 300, long_name) is not None
        with TestClient(create_app(trained.bundle, api_key=KEY, review=store)) as client:
            queued = client.get("/v1/review/next", headers=auth).json()["item"]
            assert queued["filename"] == long_name[:500] and queued["model_version"] == ("tagger/" + "9" * 300)[:200]
            body = {"image_sha256": queued["image_sha256"], "labels": {"gender": "Men"}, "reviewer": "r" * 201}
            refused = client.post("/v1/feedback", headers=auth, json=body)
            assert refused.status_code == 422 and "reviewer" in refused.text, refused.text
            assert client.post("/v1/feedback", headers=auth, json={**body, "reviewer": "r" * 200}).status_code == 200


def test_export_feedback_cli_writes_a_kaggle_folder(tmp_path, monkeypatch, capsys):
    from fashion.data_report import main as fashion_data

    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    digest, _ = store.save_image(jpeg((200, 30, 30)), "JPEG")
    store.enqueue(jpeg((200, 30, 30)), "JPEG", PREDICTIONS, "tagger/1", "red.jpg")
    store.record(digest, {"articleType": "Shirts", "baseColour": "Red"})
    def export_to(folder):   # fashion-data takes its command off sys.argv: set it afresh for each run
        monkeypatch.setattr("sys.argv", ["fashion-data", "export-feedback", f"output={folder}",
                                         f"review_url=sqlite:///{tmp_path / 'review.db'}", f"review_images={tmp_path / 'images'}"])
        with pytest.raises(SystemExit) as exit:
            fashion_data()
        return exit.value.code

    assert export_to(tmp_path / "out") == 0
    assert "1 corrected photos written" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "out" / "styles.csv")
    assert table.loc[0, "articleType"] == "Shirts" and table.loc[0, "baseColour"] == "Red" and pd.isna(table.loc[0, "gender"])
    assert table.loc[0, "productDisplayName"] == "red.jpg"   # the upload's name, to find the product in the shop
    assert Image.open(tmp_path / "out" / "images" / f"{table.loc[0, 'id']}.jpg").size == (30, 40)
    assert export_to(tmp_path / "out") == 0   # again: the folder is its own, so it is rewritten
    assert len(pd.read_csv(tmp_path / "out" / "styles.csv")) == 1
    catalogue = tmp_path / "catalogue"   # output= naming a catalogue by mistake: its labels are kept
    catalogue.mkdir()
    (catalogue / "styles.csv").write_text("id,gender,articleType\n15970,Men,Shirts\n")
    assert export_to(catalogue) == 2 and "was not written by export-feedback (its ids are not all 1,000,000,000 or more" in capsys.readouterr().err
    assert (catalogue / "styles.csv").read_text() == "id,gender,articleType\n15970,Men,Shirts\n"
    assert not (catalogue / "images").exists()


def test_two_queues_export_with_their_own_numbers_and_train_side_by_side(tmp_path, kaggle_folder, monkeypatch, capsys):
    """Two servers, each with its own SQLite queue, both numbered their corrections from 1,000,000,001:
    their exports could not train together, and one exported into the other's folder replaced its rows."""
    from fashion.data import Augmentation, FashionDataModule, LabelSpec, Preprocessing, SplitSpec
    from fashion.data_report import main as fashion_data

    def export(queue, folder):
        monkeypatch.setattr("sys.argv", ["fashion-data", "export-feedback", f"output={folder}", f"queue={queue}",
                                         f"review_url=sqlite:///{tmp_path / f'q{queue}.db'}", f"review_images={tmp_path / f'q{queue}'}"])
        with pytest.raises(SystemExit) as exit:
            fashion_data()
        return exit.value.code

    for queue, colour in [(1, (200, 30, 30)), (2, (30, 30, 200))]:
        store = ReviewStore(f"sqlite:///{tmp_path / f'q{queue}.db'}", tmp_path / f"q{queue}")
        digest, _ = store.save_image(jpeg(colour), "JPEG")
        store.enqueue(jpeg(colour), "JPEG", PREDICTIONS, "tagger/1", f"photo{queue}.jpg")
        store.record(digest, {"articleType": "Shirts"})
        assert export(queue, tmp_path / f"fb{queue}") == 0
    ids = [pd.read_csv(tmp_path / f"fb{queue}" / "styles.csv")["id"].tolist() for queue in (1, 2)]
    assert ids == [[ID_BASE + 1], [2 * ID_BASE + 1]]
    capsys.readouterr()
    assert export(2, tmp_path / "fb1") == 2   # queue 2 into queue 1's folder: refused, queue 1's rows kept
    assert "fb1/styles.csv holds the corrections of queue=1, and this is queue=2" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "fb1" / "styles.csv")["id"].tolist() == [ID_BASE + 1]

    def training_table(*folders):
        dm = FashionDataModule(str(kaggle_folder), LabelSpec(min_count=1), SplitSpec(), Augmentation(),
                               Preprocessing(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3), batch_size=4, num_workers=0)
        dm.train_only = [tmp_path / folder for folder in folders]
        dm.prepare_labels()
        return dm.table

    table = training_table("fb1", "fb2")
    assert sorted(table.loc[table["id"] >= ID_BASE, "id"]) == [ID_BASE + 1, 2 * ID_BASE + 1]
    assert export(1, tmp_path / "fb1_later") == 0   # a later export of queue 1 holds its earlier corrections too
    with pytest.raises(ValueError, match="train on a queue's newest export only; two queues' exports need their own numbers"):
        training_table("fb1", "fb1_later")


def test_a_correction_whose_photo_is_gone_or_damaged_is_left_out_by_name_and_the_rest_exported(tmp_path, capsys):
    """A disk clean-up or a damaged file in review/images used to stop the export at that photo with
    nothing written: one bad file held back every correction."""
    from fashion.data_report import export_feedback_cli

    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    photos = {"good": jpeg((200, 30, 30)), "gone": jpeg((30, 200, 30)), "damaged": jpeg((30, 30, 200))}
    items = {name: store.enqueue(data, "jpg", PREDICTIONS, "tagger/1", f"{name}.jpg") for name, data in photos.items()}
    for name, data in photos.items():
        digest, _ = store.save_image(data, "jpg")
        store.record(digest, {"articleType": "Shirts"})
    store.image_path(store.save_image(photos["gone"], "jpg")[0]).unlink()
    damaged = store.image_path(store.save_image(photos["damaged"], "jpg")[0])
    damaged.write_bytes(damaged.read_bytes()[:60])

    assert export_feedback_cli(str(tmp_path / "out"), f"sqlite:///{tmp_path / 'review.db'}", str(tmp_path / "images")) == 1
    said = capsys.readouterr().err
    assert "1 corrected photos written" in said and "2 correction(s) left out" in said
    assert f"queue item {items['gone']}: its photo {tmp_path / 'images'}" in said and "is missing" in said
    assert f"queue item {items['damaged']}: cannot decode image" in said
    table = pd.read_csv(tmp_path / "out" / "styles.csv")
    assert table["id"].tolist() == [ID_BASE + items["good"]] and table["productDisplayName"].tolist() == ["good.jpg"]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [f"{ID_BASE + items['good']}.jpg"]


def test_a_correction_whose_labels_are_not_text_is_left_out_by_name_and_the_rest_exported(tmp_path):
    """A label with an unpaired surrogate, which the API took from JSON before it refused one: the export stopped at
    it with a UnicodeEncodeError and wrote nothing, at every try."""
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    photos = {"good": jpeg((200, 30, 30)), "odd": jpeg((30, 200, 30))}
    items = {name: store.enqueue(data, "jpg", PREDICTIONS, "tagger/1", f"{name}.jpg") for name, data in photos.items()}
    store.record(store.save_image(photos["good"], "jpg")[0], {"articleType": "Shirts"})
    store.record(store.save_image(photos["odd"], "jpg")[0], {"articleType": "Caf\udce9", "gender": "Men"})
    table, left_out = export_feedback(store, tmp_path / "out")
    assert left_out == [f"queue item {items['odd']}: the labels {{'articleType': 'Caf\\udce9'}} hold characters that are "
                        "not printable text (a control character, a space other than ' ', an unpaired surrogate)"]
    assert table["id"].tolist() == [ID_BASE + items["good"]]
    assert pd.read_csv(tmp_path / "out" / "styles.csv")["articleType"].tolist() == ["Shirts"]


def test_drift_score_moves_when_the_label_mix_shifts():
    vocabulary = LabelVocabulary("articleType", ["Jeans", "Shoes", "Tshirts"], counts=[300, 300, 400])
    monitor = Monitor({"articleType": vocabulary}, window=100)
    assert psi({"Jeans": 0.3, "Shoes": 0.3, "Tshirts": 0.4}, {"Jeans": 0.3, "Shoes": 0.3, "Tshirts": 0.4}) == pytest.approx(0)
    for label in ["Jeans"] * 30 + ["Shoes"] * 30 + ["Tshirts"] * 40:
        monitor.observe({"articleType": {"label": label, "confidence": 0.9, "status": "accepted"}})
    stable = scrape(monitor.exposition(), "fashion_label_drift_psi")
    for _ in range(100):   # a new season: only shoes, half of them doubtful
        monitor.observe({"articleType": {"label": "Shoes", "confidence": 0.5, "status": "needs_review"}})
    shifted = scrape(monitor.exposition(), "fashion_label_drift_psi")
    assert stable < 0.01 and shifted > 1.0
    assert scrape(monitor.exposition(), "fashion_needs_review_share") == 1.0
    # a reload to a model that no longer tags articleType: its window gauges leave /metrics, not frozen at their last
    monitor.reference({"season": LabelVocabulary("season", ["Summer", "Winter"], counts=[5, 5])})
    for metric in ("fashion_label_drift_psi", "fashion_needs_review_share"):
        with pytest.raises(AssertionError, match="not in /metrics"):
            scrape(monitor.exposition(), metric)


def test_drift_on_the_api_moves_when_traffic_shifts_to_one_kind_of_photo(trained):
    """Traffic like the training data, then traffic of one photo only: /metrics' PSI of the predicted
    labels against the training labels grows. baseColour: the tiny model reads colour from its colour
    histogram after one epoch (its articleType head still answers one class for every photo)."""
    photos = sorted((trained.data / "images").glob("*.jpg"))
    with TestClient(create_app(trained.bundle, drift_window=len(photos))) as client:
        def send(batch: list[Path]) -> float:
            for photo in batch:
                assert client.post("/v1/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}).status_code == 200
            text = client.get("/metrics").content
            return scrape(text, "fashion_label_drift_psi", 'attribute="baseColour"')

        like_training = send(photos)
        one_kind = send([photos[0]] * len(photos))   # the window now holds only this photo's labels
    assert one_kind > like_training + 1.0, (like_training, one_kind)


def test_the_gate_refuses_a_drop_beyond_the_margin():
    from fashion.promote import gate

    champion = {"holdout/articleType": 0.90, "holdout/gender": 0.95}
    assert gate(champion, {"holdout/articleType": 0.895, "holdout/gender": 0.97}, margin=0.01) == (True, [])
    assert gate(champion, {"holdout/articleType": 0.87, "holdout/gender": 0.97}, margin=0.01) == (False, ["holdout/articleType"])
    assert gate(champion, {"holdout/gender": 0.97}, margin=0.01) == (False, ["holdout/articleType"])   # lost an attribute
    assert gate({}, {"holdout/gender": 0.5}, margin=0.01) == (True, [])   # no champion yet


def test_the_gate_compares_what_is_served_the_taxonomy_decoded_together(trained, monkeypatch):
    import fashion.inference.evaluation
    from fashion.promote import accuracies
    from fashion.tracking.registry import RegisteredBundle

    scores = {"eval/articleType/acc": 0.80, "eval/articleType/acc_taxonomy": 0.83, "eval/gender/acc": 0.90}
    monkeypatch.setattr(fashion.inference.evaluation, "evaluate", lambda predictor, source, lanes: (scores, None, None))
    got = accuracies(RegisteredBundle("tagger", "1", trained.bundle, None), {"holdout": None}, "auto")
    assert got["holdout/articleType"] == 0.83 and got["holdout/gender"] == 0.90


def scrape(exposition: bytes, metric: str, labels: str = 'attribute="articleType"') -> float:
    for line in exposition.decode().splitlines():
        if line.startswith(f"{metric}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{metric}{{{labels}}} not in /metrics")


def register_checkpoint(checkpoint: Path, tmp_path: Path, name: str, alias: str, tracking_uri: str) -> None:
    from fashion.export import export_cli

    export_cli(str(tmp_path / f"bundle-{alias}-{checkpoint.stem}"), checkpoint=str(checkpoint), onnx=True,
               tracking_uri=tracking_uri, register=name, alias=alias)


def test_the_improvement_loop_end_to_end(trained, tmp_path, capsys, monkeypatch):
    """train (the session's tiny model) -> export + register as champion -> serve models:/tagger@champion ->
    predictions needing review are queued -> a person corrects one -> export-feedback -> retrain on the
    catalogue plus the corrections -> register as challenger -> promote through the gate -> reload under
    load, with no failed request -> /metrics shows the traffic."""
    from fashion.promote import main as promote
    from fashion.train import train

    tracking_uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)   # the team's one store: runs and registry
    register_checkpoint(trained.checkpoint, tmp_path, "tagger", "champion", tracking_uri)
    assert "registered: tagger version 1 (alias champion)" in capsys.readouterr().out

    review = ReviewStore(f"sqlite:///{tmp_path / 'review' / 'review.db'}", tmp_path / "review" / "images")
    app = create_app("models:/tagger@champion", tracking_uri=tracking_uri, model_cache=tmp_path / "cache",
                     api_key=KEY, review=review)
    photos = sorted((trained.data / "images").glob("*.jpg"))[:6]
    with TestClient(app) as client:
        assert client.get("/health").json()["model_version"] == "tagger/1"
        for photo in photos:
            answer = client.post("/v1/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert answer.status_code == 200 and answer.json()["model_version"] == "tagger/1"
        # The tiny model is uncalibrated: every tag needs review, so every photo is queued once.
        assert review.queued() == len(photos)

        assert client.get("/v1/review/next").json()["error"]["code"] == "unauthorized"
        auth = {"X-API-Key": KEY}
        item = client.get("/v1/review/next", headers=auth).json()["item"]
        image = client.get(f"/v1/review/images/{item['image_sha256']}", headers=auth)
        assert image.content == (trained.data / "images" / item["filename"]).read_bytes()
        bad = client.post("/v1/feedback", headers=auth, json={"image_sha256": item["image_sha256"], "labels": {"colour": "Red"}})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_labels"
        for odd in ('"Jeans\\u0000"', '"\\udce9"', '"Navy\\u00a0Blue"'):   # JSON carries them; styles.csv cannot (a lone surrogate)
            body = f'{{"image_sha256": "{item["image_sha256"]}", "labels": {{"articleType": {odd}}}, "new_labels": true}}'
            bad = client.post("/v1/feedback", headers={**auth, "content-type": "application/json"}, content=body)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_labels", bad.text
            assert "hold characters that are not printable text" in bad.json()["error"]["message"]
        # a new articleType without its parents would be in no combination the retrained model decodes among
        alone = client.post("/v1/feedback", headers=auth, json={"image_sha256": item["image_sha256"], "new_labels": True,
                                                                "labels": {"articleType": "Jumpsuit", "subCategory": "Topwear"}})
        assert alone.status_code == 400 and "a new class articleType='Jumpsuit' needs the labels of ['masterCategory'] too" \
            in alone.json()["error"]["message"] and review.queued() == len(photos)
        typo = client.post("/v1/feedback", headers=auth, json={"image_sha256": item["image_sha256"], "labels": {"articleType": "Jeens"}})
        assert typo.status_code == 400 and typo.json()["error"]["code"] == "new_label"   # not stored as a class of its own
        assert "articleType='Jeens' (closest: Jeans" in typo.json()["error"]["message"] and review.queued() == len(photos)
        # spaces around a label (typed, pasted) are dropped: not a new class " Jeans "
        labels = {"articleType": " Jeans ", "subCategory": "Bottomwear", "masterCategory": "Apparel", "gender": "Women\t"}
        done = client.post("/v1/feedback", headers=auth, json={"image_sha256": item["image_sha256"], "labels": labels,
                                                               "reviewer": "ana"})
        assert done.status_code == 200 and done.json()["queued"] == len(photos) - 1

        feedback = tmp_path / "feedback"
        table, left_out = export_feedback(review, feedback)
        assert left_out == [] and table["id"].tolist() == [ID_BASE + item["id"]] and table["articleType"].tolist() == ["Jeans"]
        assert table["gender"].tolist() == ["Women"]
        assert pd.isna(table["season"].iloc[0]) and (feedback / "images" / f"{ID_BASE + item['id']}.jpg").is_file()

        retrained = tmp_path / "retrain"
        overrides = tiny_overrides(retrained, trained.data) + ["data.true_aspect=null", f"data.train_only=[{feedback}]",
                                                                "trainer.limit_train_batches=3"]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            train(compose(config_name="train", overrides=overrides))
        mlflow.set_tracking_uri(tracking_uri)
        run_id = mlflow.search_runs(experiment_names=["fashion"], order_by=["start_time DESC"]).iloc[0]["run_id"]
        split = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="data/split.csv"))
        assert split.set_index("id").loc[ID_BASE + item["id"], "split"] == "train"   # a correction never tests
        from fashion.export import export_cli

        export_cli(str(tmp_path / "bundle-v2"), run_id=run_id, tracking_uri=tracking_uri, register="tagger")
        assert "registered: tagger version 2 (alias challenger)" in capsys.readouterr().out

        sets = f"+sets.tiny={{root:{trained.data}}}"
        assert promote([f"name=tagger", f"tracking_uri={tracking_uri}", f"model_cache={tmp_path / 'cache'}", "margin=1.0",
                        "sets={}", sets]) == 0
        assert "decision: promote: tagger/2 -> champion" in capsys.readouterr().out

        failures, served = [], set()
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                answer = client.post("/v1/predict", files={"file": (photos[0].name, photos[0].read_bytes(), "image/jpeg")})
                if answer.status_code != 200:
                    failures.append(answer.status_code)
                else:
                    served.add(answer.json()["model_version"])

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(hammer)
            swapped = client.post("/v1/admin/reload", headers=auth).json()
            while "tagger/2" not in served and not failures:
                threading.Event().wait(0.05)
            stop.set()
        assert swapped["changed"] and swapped["previous_version"] == "tagger/1" and swapped["model_version"] == "tagger/2"
        assert not failures and served == {"tagger/1", "tagger/2"}
        assert client.get("/health").json()["model_version"] == "tagger/2"

        metrics = client.get("/metrics").text
        assert 'fashion_requests_total{route="/v1/predict",status="200"}' in metrics
        assert 'fashion_errors_total{code="unauthorized"} 1.0' in metrics
        assert "fashion_label_drift_psi" in metrics and "fashion_prediction_confidence_bucket" in metrics


def test_review_and_admin_endpoints_are_off_without_a_key_and_predictions_stay_open(trained):
    photo = next((trained.data / "images").glob("*.jpg"))
    upload = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    with TestClient(create_app(trained.bundle)) as client:
        assert client.post("/v1/admin/reload", headers={"X-API-Key": "anything"}).json()["error"]["code"] == "admin_disabled"
        assert client.post("/v1/predict", files=upload).status_code == 200
    with TestClient(create_app(trained.bundle, api_key=KEY, open_predictions=False)) as client:
        assert client.post("/v1/predict", files=upload).json()["error"]["code"] == "unauthorized"
        assert client.post("/v1/predict", files=upload, headers={"X-API-Key": KEY}).status_code == 200


def test_a_registered_version_links_the_training_run(trained, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from fashion.export import export_cli

    export_cli(str(tmp_path / "bundle"), run_id=trained.run_id, tracking_uri=trained.tracking_uri, onnx=False,
               register="tagger-linked", alias="challenger")
    version = MlflowClient(trained.tracking_uri).get_model_version_by_alias("tagger-linked", "challenger")
    assert version.run_id == trained.run_id
    assert "serve with: fashion-serve bundle=models:/tagger-linked@challenger" in capsys.readouterr().out


def test_a_champion_that_cannot_be_fetched_stops_the_gate_rather_than_counting_as_none(trained, tmp_path, capsys):
    """Any registry error fetching the champion (its artifacts gone, a store that failed) read as "no
    champion yet", and the challenger was promoted with nothing compared."""
    from mlflow.tracking import MlflowClient

    from fashion.export import export_cli
    from fashion.promote import main as promote

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for alias in ("champion", "challenger"):
        export_cli(str(tmp_path / alias), checkpoint=str(trained.checkpoint), onnx=False, tracking_uri=tracking_uri,
                   register="tagger", alias=alias)
    client = MlflowClient(tracking_uri)
    champion = client.get_model_version_by_alias("tagger", "champion")
    shutil.rmtree(client.get_logged_model(champion.source.removeprefix("models:/")).artifact_location)
    capsys.readouterr()
    args = ["name=tagger", f"tracking_uri={tracking_uri}", f"model_cache={tmp_path / 'cache'}", "mlflow=false",
            f"+sets.tiny={{root:{trained.data}}}"]
    assert promote(args) == 2
    assert "fashion-promote: the champion, models:/tagger@champion: " in capsys.readouterr().err
    assert client.get_model_version_by_alias("tagger", "champion").version == champion.version
    client.delete_registered_model_alias("tagger", "champion")   # no champion at all: the first one is promoted
    assert promote(args) == 0 and "no champion yet" in capsys.readouterr().out


def test_a_set_folder_that_is_missing_or_holds_no_photo_is_one_line_before_any_download(tmp_path, capsys):
    """Both were tracebacks, after both models had been downloaded and one had been scored."""
    from fashion.promote import main as promote

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "styles.csv").write_text("id,gender\n1,Men\n")
    for root, said in [(tmp_path / "nowhere", "styles.csv not found"), (empty, "with a readable image is left to score")]:
        assert promote(["name=tagger", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", f"+sets.h.root={root}",
                        f"model_cache={tmp_path / 'cache'}", "mlflow=false"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fashion-promote: sets.h: ") and str(root) in err and said in err and "Traceback" not in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()


def test_queueing_a_photo_for_review_does_not_hold_the_model(trained, tmp_path):
    """The review queue's database and file writes run after the model's thread is released: with one
    model thread, another request is answered while the first one's photo is still being queued."""
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")
    entered, release, calls = threading.Event(), threading.Event(), []
    enqueue = store.enqueue

    def held_enqueue(*args, **kwargs):
        calls.append(args[-1])
        if len(calls) == 1:   # only the first request's write waits
            entered.set()
            release.wait(60)
        return enqueue(*args, **kwargs)

    store.enqueue = held_enqueue
    post = lambda client, name: client.post("/v1/predict", files={"file": (name, jpeg((200, 30, 30)), "image/jpeg")})  # noqa: E731
    with TestClient(create_app(trained.bundle, review=store, model_threads=1)) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, client, "first.jpg")
        try:
            assert entered.wait(60), "the first photo was never queued for review (every tag accepted?)"
            second = pool.submit(post, client, "second.jpg")
            assert second.result(timeout=30).status_code == 200   # answered while the first is still being queued
            assert not first.done()
        finally:
            release.set()
        assert first.result(timeout=60).status_code == 200
    assert calls[0] == "first.jpg" and store.queued() == 1   # same pixels: one queue item, both photos answered


def test_a_full_review_queue_takes_no_new_photo_and_stores_none_of_its_pixels(tmp_path):
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images", max_queued=2)
    red, blue, green = jpeg((200, 30, 30)), jpeg((30, 40, 190)), jpeg((20, 180, 40))
    first = store.enqueue(red, "JPEG", PREDICTIONS, "tagger/1", "red.jpg")
    store.enqueue(blue, "JPEG", PREDICTIONS, "tagger/1", "blue.jpg")
    assert store.enqueue(green, "JPEG", PREDICTIONS, "tagger/1", "green.jpg") is None      # full: turned away
    assert store.queued() == 2 and len(list((tmp_path / "images").rglob("*.jpeg"))) == 2    # and not written
    assert store.enqueue(red, "JPEG", PREDICTIONS, "tagger/2", "red.jpg") == first          # already queued: updated
    assert store.next_item()["model_version"] == "tagger/2"
    store.record(store.next_item()["image_sha256"], {"articleType": "Shirts"})               # a person frees a place
    assert store.enqueue(green, "JPEG", PREDICTIONS, "tagger/2", "green.jpg") is not None and store.queued() == 2
    with pytest.raises(ValueError, match="max_queued"):
        ReviewStore(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other", max_queued=0)


def test_the_server_queues_only_for_the_attributes_named_and_counts_what_a_full_queue_turns_away(trained, tmp_path, capsys):
    post = lambda client, colour: client.post("/v1/predict", files={"file": ("p.jpg", jpeg(colour), "image/jpeg")})  # noqa: E731
    colours = [(200, 30, 30), (30, 40, 190), (20, 180, 40)]

    def served(review: ReviewStore, review_for: list[str]) -> tuple[list[dict], str]:
        app = create_app(trained.bundle, review=review, review_for=review_for)
        app.state.model_slot.current.predictor.trained.decision.thresholds["gender"] = 0.0   # gender: always sure
        with TestClient(app) as client:
            statuses = [{a: p["status"] for a, p in post(client, c).json()["predictions"].items()} for c in colours]
            return statuses, client.get("/metrics").text

    quiet = ReviewStore(f"sqlite:///{tmp_path / 'quiet.db'}", tmp_path / "quiet")
    statuses, _ = served(quiet, ["gender"])
    assert all(s["gender"] == "accepted" and s["usage"] == "needs_review" for s in statuses), statuses
    assert quiet.queued() == 0                     # the one attribute it watches was never in doubt

    capped = ReviewStore(f"sqlite:///{tmp_path / 'capped.db'}", tmp_path / "capped", max_queued=1)
    _, metrics = served(capped, ["gender", "usage"])
    assert capped.queued() == 1                    # usage was in doubt three times: one queued, two turned away
    assert 'fashion_review_not_queued_total{reason="queue_full"} 2.0' in metrics
    with pytest.raises(ValueError, match=r"review_for names \['sleeve'\]"):
        create_app(trained.bundle, review_for=["sleeve"])
    from fashion.serve import main as serve_main   # a key, not the model: said as one (was "cannot load the model: ...")
    with pytest.raises(SystemExit) as refused:
        serve_main([f"bundle={trained.bundle}", "review_for=[sleeve]", "port=0", "review_queue=false"])
    assert refused.value.code == 2 and capsys.readouterr().err.startswith("fashion-serve: review_for names ['sleeve']")


def test_a_review_queue_that_fails_costs_the_review_not_the_prediction(trained, tmp_path, caplog):
    """A full disk (or a database gone) under the review queue turned every doubtful prediction into a 500,
    although the model had answered. Now the answer is served; the photo's review is logged and counted."""
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    store.save_image = full_disk
    app = create_app(trained.bundle, review=store)
    app.state.model_slot.current.predictor.trained.decision.thresholds["gender"] = 1.1   # gender: always in doubt
    with TestClient(app) as client:
        answer = client.post("/v1/predict", files={"file": ("p.jpg", jpeg((200, 30, 30)), "image/jpeg")})
        metrics = client.get("/metrics").text
    assert answer.status_code == 200 and answer.json()["predictions"]["gender"]["status"] == "needs_review"
    assert 'fashion_review_not_queued_total{reason="error"} 1.0' in metrics
    assert "could not queue a photo for review" in caplog.text and "No space left on device" in caplog.text
    assert store.queued() == 0


def test_a_review_database_that_cannot_be_opened_is_a_clear_error_that_hides_its_password(tmp_path, capsys):
    from fashion.data_report import export_feedback_cli

    with pytest.raises(ValueError, match="not a database URL"):
        ReviewStore("review.db", tmp_path / "images")
    with pytest.raises(ValueError, match=r"cannot open the review database postgresql\+psycopg://bob:\*\*\*@127.0.0.1:1/db") as err:
        ReviewStore("postgresql+psycopg://bob:hunter2@127.0.0.1:1/db", tmp_path / "images")   # nothing listens on port 1
    assert "hunter2" not in str(err.value)
    assert export_feedback_cli(str(tmp_path / "out"), review_url="review.db") == 2
    assert "export-feedback: cannot open the review queue: review_url is not a database URL" in capsys.readouterr().err



def test_servers_that_open_a_new_queue_together_all_start(tmp_path):
    """Replicas started at once against a new queue each created its tables: all but one failed to start
    (`table review_items already exists` on SQLite, a duplicate pg_type key on PostgreSQL). Four processes
    open ten new queues of each kind, each queue at one signal; before the fix 9 of 40 SQLite opens failed,
    and 43 of 80 with PostgreSQL's as well."""
    import multiprocessing
    import uuid

    from sqlalchemy import create_engine, make_url, text

    from tests.started_together import open_each_at_the_signal

    rounds, processes = 10, 4
    urls = [f"sqlite:///{tmp_path}/queue{index}/review.db" for index in range(rounds)]
    server = next((url for url in store_urls(tmp_path) if url.startswith("postgresql")), None)
    admin = server and create_engine(server, isolation_level="AUTOCOMMIT")   # new databases: the shared one has tables
    made = [f"fashion_race_{uuid.uuid4().hex[:12]}" for _ in range(rounds)] if admin else []
    for name in made:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        urls.append(make_url(server).set(database=name).render_as_string(hide_password=False))
    spawn = multiprocessing.get_context("spawn")
    start, answers = spawn.Barrier(processes), spawn.Queue()
    workers = [spawn.Process(target=open_each_at_the_signal, args=(urls, str(tmp_path / "images"), start, answers))
               for _ in range(processes)]
    try:
        for worker in workers:
            worker.start()
        results = [answers.get(timeout=120) for _ in range(processes * len(urls))]
        for worker in workers:
            worker.join(30)
    finally:
        for name in made:
            with admin.connect() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    failed = [(url, answer) for url, answer in results if answer != 0]   # 0: opened, and its queue is empty
    assert not failed, f"{len(failed)} of {len(results)} opens failed, e.g. {failed[0]}"


def test_exporting_from_a_review_queue_that_does_not_exist_writes_nothing_and_says_so(tmp_path, capsys):
    """A typo in review_url once made a new, empty SQLite queue and reported 0 corrections as if all was well."""
    from fashion.data_report import export_feedback_cli

    missing = tmp_path / "reveiw" / "review.db"
    assert export_feedback_cli(str(tmp_path / "out"), review_url=f"sqlite:///{missing}") == 2
    assert f"no review queue at {missing}" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists() and not (tmp_path / "out").exists()


def test_a_download_from_the_registry_prints_no_progress_bar_into_a_log(trained, tmp_path, capfd, monkeypatch):
    """MLflow's artifact progress bar wrote ~100 updates into a server's log per downloaded version; it is kept
    for a terminal only (stderr here is a pipe, as under systemd or docker)."""
    from fashion.tracking.registry import fetch_bundle

    # set, then removed: monkeypatch restores "unset" at the end, so the value the download sets stays in this test
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    tracking_uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    register_checkpoint(trained.checkpoint, tmp_path, "tagger", "champion", tracking_uri)
    capfd.readouterr()
    fetched = fetch_bundle("models:/tagger@champion", tracking_uri, tmp_path / "cache")
    assert (fetched.bundle / "manifest.json").is_file()
    assert "Downloading artifacts" not in capfd.readouterr().err
