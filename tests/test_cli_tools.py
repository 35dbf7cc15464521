"""Every tool takes Hydra overrides like fashion-train; --help lists the keys; the old flags still work."""

import http.server
import json
import re
import socket
import threading
import time

import pytest

from fashion.cli import to_overrides, tool_config
from fashion.config import ConfigError, refuse_a_silent_server
from fashion.evaluate import main as eval_main
from fashion.export import main as export_main
from fashion.predict import main as predict_main
from fashion.serve import main as serve_main
from fashion.tracking import ensure_experiment
from tests.conftest import SAMPLE

IMAGES = sorted((SAMPLE / "images").glob("*.jpg"))[:2]


def test_old_flags_become_the_same_overrides():
    assert to_overrides(["--bundle", "b", "x.jpg", "--top-k", "5", "--taxonomy", "y it's.jpg"], positional="inputs",
                        flags={"taxonomy"}) == [
        "bundle='b'", "top_k='5'", "taxonomy=true", "inputs=['x.jpg','y it\\'s.jpg']"]
    assert to_overrides(["--years", "2013", "2014", "--no-mlflow", "data=d"], lists=("years",), flags={"mlflow"}) == [
        "years=['2013','2014']", "mlflow=false", "data=d"]


def test_an_old_flag_value_is_one_value_whatever_it_holds():
    """A path with quotes, commas and '=' stays the flag's value: it cannot end the quoting and set other keys."""
    from fashion.predict import predict

    hostile = "b',format=csv,output='/tmp/pwned"
    cfg = tool_config("fashion-predict", "predict", ["--bundle", hostile, "x].jpg", "--top-k", "2"], predict,
                      positional="inputs")
    assert cfg["bundle"] == hostile and cfg["format"] is None and cfg["output"] is None
    assert cfg["inputs"] == ["x].jpg"] and cfg["top_k"] == 2


def test_fashion_promote_refuses_a_registry_name_or_alias_mlflow_would_refuse_before_scoring(capsys):
    """An alias MLflow reserves (`v2`) was found when the gate moved it, after both models were scored."""
    from fashion.promote import main as promote_main

    assert promote_main(["name=tagger", "champion=v2", "+sets.holdout.root=/no/such/folder"]) == 2
    assert "fashion-promote: champion=v2: Version alias name 'v2' is reserved" in capsys.readouterr().err


def test_registry_names_are_checked_by_the_rules_this_mlflow_has(monkeypatch):
    """The rules are MLflow's private functions: one renamed in another release skips that check (MLflow applies
    its rules when registering) instead of failing every export and promotion with an AttributeError."""
    import mlflow.utils.validation

    from fashion.tracking.registry import check_names

    with pytest.raises(ValueError, match="name=my/model: "):
        check_names("my/model", {})
    monkeypatch.delattr(mlflow.utils.validation, "_validate_model_alias_name_reserved")
    check_names("tagger", {"champion": "v2"})
    with pytest.raises(ValueError, match="champion=bad/alias: "):   # the rules still there still apply
        check_names("tagger", {"champion": "bad/alias"})


def test_a_text_key_given_digits_keeps_them_as_typed():
    """Hydra reads `api_key=0123456` as the number 123456: refused as "not a valid string", and its leading zero
    was gone. A key that takes text now gets the text as typed; a number key still gets its number."""
    from fashion.predict import predict
    from fashion.serve import serve

    cfg = tool_config("fashion-serve", "serve", ["bundle=2024", "api_key=0123456", "port=8001", "max_files=4"], serve)
    assert (cfg["bundle"], cfg["api_key"], cfg["port"], cfg["max_files"]) == ("2024", "0123456", 8001, 4)
    cfg = tool_config("fashion-predict", "predict", ["bundle=1.0", "output=2024", "top_k=2", "explain=true"], predict)
    assert (cfg["bundle"], cfg["output"], cfg["top_k"], cfg["explain"]) == ("1.0", "2024", 2, True)


def test_predict_takes_overrides_and_bare_paths(trained, tmp_path, capsys):
    output = tmp_path / "tags.csv"
    assert predict_main([f"bundle={trained.bundle}", *map(str, IMAGES), "format=csv", f"output={output}", "top_k=2"]) == 0
    assert output.read_text().count("\n") == 3
    assert predict_main([f"checkpoint={trained.checkpoint}", f"inputs=[{IMAGES[0]}]"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(row["predictions"]) == {"gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"}


@pytest.mark.parametrize("main,argv,message", [
    # a misspelt key, named with the closest real one (Hydra's own message said to append it with +, refused next)
    (predict_main, ["bundle=b", "x.jpg", "topk=3"], "fashion-predict: no key 'topk' in conf/predict.yaml (did you mean 'top_k'?)"),
    (predict_main, ["+bundl=b", "x.jpg"], "no key 'bundl' in conf/predict.yaml (did you mean 'bundle'?)"),
    (serve_main, ["bundle=b", "revew_for=[season]"], "no key 'revew_for' in conf/serve.yaml (did you mean 'review_for'?)"),
    (predict_main, ["bundle=b", "x.jpg", "runtime=tensorrt"], "runtime: Input should be 'auto', 'onnx' or 'torch'"),
    (predict_main, ["bundle=b", "x.jpg", "format=xml"], "format: Input should be 'jsonl', 'csv' or 'parquet'"),
    (eval_main, ["bundle=b", "root=d", "batch_size=many"], "batch_size"),
    (eval_main, ["bundle=b"], "root"),                                               # mandatory key missing
    (export_main, ["run_id=r"], "output"),
    (serve_main, ["bundle=b", "port=http"], "port"),
    (serve_main, ["bundle=b", "log_level=loud"], "log_level"),
    # counts out of range: refused at the key, not a traceback from range() or torch.topk later
    (predict_main, ["bundle=b", "x.jpg", "top_k=0"], "top_k: Input should be greater than or equal to 1 (got 0)"),
    (predict_main, ["bundle=b", "x.jpg", "batch_size=0"], "batch_size: Input should be greater than or equal to 1"),
    (predict_main, ["bundle=b", "x.jpg", "lanes=-1"], "lanes: Input should be greater than or equal to 1"),
    (predict_main, ["bundle=b", "x.jpg", "workers=-1"], "workers: Input should be greater than or equal to 0"),
    (predict_main, ["bundle=b", "x.jpg", "lanes=0", "workers=-1"],   # two keys wrong: each named
     "lanes: Input should be greater than or equal to 1 (got 0); workers: Input should be greater than or equal to 0 (got -1)"),
    (eval_main, ["bundle=b", "root=d", "batch_size=0"], "batch_size: Input should be greater than or equal to 1"),
    (eval_main, ["bundle=b", "root=d", "true_aspect=0"], "true_aspect: Input should be greater than 0 (got 0)"),
    (serve_main, ["bundle=b", "port=70000"], "port: Input should be less than or equal to 65535"),
    (serve_main, ["bundle=b", "top_k=0"], "top_k: Input should be greater than or equal to 1"),
    (serve_main, ["bundle=b", "model_threads=0"], "model_threads: Input should be greater than or equal to 1"),
    (serve_main, ["bundle=b", "review_max_queued=0"], "review_max_queued: Input should be greater than or equal to 1"),
    # MLflow's rules for registry names, before anything is written (were its traceback once the bundle was logged)
    (export_main, ["checkpoint=c", "output=o", "register=my/model"],
     "fashion-export: register=my/model: Invalid model name 'my/model'. Names cannot contain '/' or ':'."),
    (export_main, ["checkpoint=c", "output=o", "register=tagger", "alias=v2"], "alias=v2: Version alias name 'v2' is reserved"),
])
def test_a_wrong_key_or_value_exits_2_naming_it(main, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("main,keys", [
    (predict_main, ["inputs:", "bundle:", "runtime:", "explain_dir:"]),
    (eval_main, ["root:", "years:", "true_aspect:", "exclude_split:", "tracking_uri:"]),
    (export_main, ["run_id:", "checkpoint:", "output:", "onnx:"]),
    (serve_main, ["bundle:", "port:", "max_bytes:", "runtime:"]),
])
def test_help_lists_every_key(main, keys, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert all(key in printed for key in keys), printed


@pytest.mark.parametrize("argv,code,stream,message", [
    (["--help"], 0, "out", "export-feedback  the review queue's corrections"),
    ([], 2, "err", "fashion-data: no command"),
    (["reprot", "data=subset"], 2, "err", "fashion-data: unknown command 'reprot'"),
])
def test_fashion_data_says_its_commands_and_refuses_an_unknown_one(argv, code, stream, message, monkeypatch, capsys):
    from fashion.data_report import main as data_main

    monkeypatch.setattr("sys.argv", ["fashion-data", *argv])
    with pytest.raises(SystemExit) as exit_:
        data_main()
    assert exit_.value.code == code
    assert message in getattr(capsys.readouterr(), stream)


def test_export_names_what_is_wrong_without_a_traceback(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SystemExit) as exit_:
        export_main([f"checkpoint={tmp_path / 'missing.ckpt'}", f"output={tmp_path / 'b'}", "mlflow=false", f"tracking_uri={store}"])
    assert exit_.value.code == 2 and "missing.ckpt" in capsys.readouterr().err   # 2, as every tool's bad input
    assert not (tmp_path / "mlflow.db").exists()   # a checkpoint's export without MLflow opens (creates) no store
    with pytest.raises(SystemExit) as exit_:   # a store that is not there: named, and not created empty
        export_main(["run_id=0123abcd", f"output={tmp_path / 'b'}", "mlflow=false", f"tracking_uri={store}"])
    assert exit_.value.code == 2 and not (tmp_path / "mlflow.db").exists()
    assert f"fashion-export: no MLflow store at {tmp_path / 'mlflow.db'}" in capsys.readouterr().err
    ensure_experiment(store, "fashion")
    with pytest.raises(SystemExit) as exit_:   # an unknown run: one line naming it and the store, not a traceback
        export_main(["run_id=0123abcd", f"output={tmp_path / 'b'}", "mlflow=false", f"tracking_uri={store}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"\nfashion-export: Run with id=0123abcd not found (tracking store {store})\n")


def test_a_registry_model_from_a_store_that_is_not_there_is_refused_without_creating_one(tmp_path, capsys):
    """A mistyped tracking_uri made fashion-serve and fashion-promote create an empty store there and then
    say the model is not found; the empty store stayed behind."""
    for uri, path in [(f"sqlite:///{tmp_path / 'typo.db'}", tmp_path / "typo.db"),
                      (f"file://{tmp_path / 'typo_runs'}", tmp_path / "typo_runs"),
                      (str(tmp_path / "bare_runs"), tmp_path / "bare_runs")]:
        with pytest.raises(SystemExit) as exit_:
            serve_main(["bundle=models:/tagger@champion", f"tracking_uri={uri}", f"model_cache={tmp_path / 'cache'}",
                        "review_queue=false"])
        assert exit_.value.code == 2 and f"cannot load the model: no MLflow store at {path}" in capsys.readouterr().err
        assert not path.exists()


def closed_port() -> int:
    with socket.socket() as listener:   # bound, then closed: a connection there is refused
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def test_a_tracking_server_that_does_not_answer_is_one_line_at_once(trained, tmp_path, capsys, monkeypatch):
    """MLflow's client retries a refused connection with back-off: fashion-train waited over six minutes on a
    mistyped MLFLOW_TRACKING_URI, and fashion-eval scored the whole folder first. (The retries are off here, so
    the old code fails fast too, with MLflow's own error.)"""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert_refused_before_the_work(trained, tmp_path, capsys, f"http://ana:s3cret@127.0.0.1:{closed_port()}", "does not answer")

    class NotFound(http.server.BaseHTTPRequestHandler):   # a server that answers, if only 404: it is there
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), NotFound) as answering:
        threading.Thread(target=answering.serve_forever, daemon=True).start()
        refuse_a_silent_server(f"http://127.0.0.1:{answering.server_address[1]}")
        # TLS it cannot check (here: no TLS at all) is an answer too: certificates are MLflow's to check
        refuse_a_silent_server(f"https://127.0.0.1:{answering.server_address[1]}")
        answering.shutdown()


def test_a_tracking_server_that_wants_credentials_is_one_line_before_the_work(trained, tmp_path, capsys, monkeypatch):
    """MLflow's basic-auth app (or a proxy) answers 401 without credentials, 403 for a user without the right:
    fashion-train built the data and the model, then printed MLflow's traceback (after a Hydra callback's warning);
    fashion-eval scored the whole folder first. Now one line naming where MLflow reads credentials."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for status, said in ((401, "asks for credentials (401): MLflow sends MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
                         (403, "refused the request (403): the credentials MLflow sent")):
        class Refusing(http.server.BaseHTTPRequestHandler):
            def answer(self):
                self.send_response(200 if self.path == "/health" else status)   # MLflow's auth app leaves /health open
                self.end_headers()
                self.wfile.write(b"OK" if self.path == "/health" else b"You are not authenticated.")
            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        with http.server.HTTPServer(("127.0.0.1", 0), Refusing) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            assert_refused_before_the_work(trained, tmp_path, capsys, f"http://ana:s3cret@127.0.0.1:{server.server_address[1]}", said)
            server.shutdown()


def assert_refused_before_the_work(trained, tmp_path, capsys, uri: str, said: str) -> None:
    """At the store's first use, fashion-eval before it scores, fashion-export: one line, without the URL's password."""
    shown = uri.replace("ana:s3cret@", "")
    with pytest.raises(ConfigError, match=re.escape(f"the MLflow tracking server {shown} {said}")):
        ensure_experiment(uri, "fashion")
    assert eval_main([f"bundle={trained.bundle}", f"root={trained.data}", f"output={tmp_path / 'e'}", f"tracking_uri={uri}"]) == 2
    assert f"fashion-eval: the MLflow tracking server {shown} {said}" in capsys.readouterr().err
    assert not list((tmp_path / "e").iterdir())   # refused before scoring: no report written
    with pytest.raises(SystemExit) as exit_:
        export_main(["run_id=0123abcd", f"output={tmp_path / 'b'}", f"tracking_uri={uri}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"fashion-export: the MLflow tracking server {shown} {said}" in err
    assert "s3cret" not in err


def test_predict_with_nothing_to_score_says_why(tmp_path, capsys):
    empty = tmp_path / "manifest.csv"
    empty.write_text("path\n")
    assert predict_main(["bundle=b", f"manifest={empty}"]) == 2
    assert f"nothing to score: manifest {empty} listing no path in column 'path'" in capsys.readouterr().err
    assert predict_main(["bundle=b"]) == 2
    assert "nothing to score: give image files, folders or globs, or manifest=" in capsys.readouterr().err


def test_serve_opens_the_review_queue_only_once_the_model_has_loaded(trained, tmp_path, monkeypatch, capsys):
    """A mistyped bundle once left an empty queue, review/review.db, in the working directory (and one was
    committed to this repo)."""
    import uvicorn
    from fastapi.testclient import TestClient

    from fashion.feedback.store import ReviewStore

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        serve_main(["bundle=no_such_bundle"])
    assert exit_.value.code == 2 and "fashion-serve: cannot load the model: no_such_bundle" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

    served = []
    def run(server: uvicorn.Server, sockets) -> None:   # started, served nothing
        served.append(server.config.app)
        server.started = True
    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve_main([f"bundle={trained.bundle}"])
    assert isinstance(served[0].state.review, ReviewStore) and (tmp_path / "review" / "review.db").is_file()
    with TestClient(served[0]) as client:
        assert client.get("/health").json()["review_queue"] is True


def test_a_progress_bar_in_a_log_updates_every_30_s_not_ten_times_a_second(trained, tmp_path, capsys, monkeypatch):
    """At a terminal the bar is live; in a log (pytest's stderr is not a terminal) a catalogue job wrote
    ten updates a second into one line, megabytes in an hour's job. tqdm's clock here moves half a second
    a reading, so each of the 12 batches comes well after the last: drawn are the start and the end only."""
    import itertools
    import shutil
    import sys

    clock = itertools.count(0, 0.5)
    monkeypatch.setattr("tqdm.std.time", lambda: next(clock))
    copies = [shutil.copy(IMAGES[0], tmp_path / f"{i}.jpg") for i in range(96)]
    assert predict_main([f"bundle={trained.bundle}", *map(str, copies), "batch_size=8", f"output={tmp_path / 't.csv'}"]) == 0
    drawn = [part for part in capsys.readouterr().err.split("\r") if "img" in part]
    assert len(drawn) == 2 and "0/96" in drawn[0] and "96/96" in drawn[1], drawn

    from fashion.config import LOG_PROGRESS_EVERY_S, progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress_bar(total=1) as bar:
        assert bar.mininterval < 1 < LOG_PROGRESS_EVERY_S


def test_the_port_is_held_while_the_model_loads_and_served_on(trained, capsys, monkeypatch):
    """The port was checked free, then let go: a second server started during the first's model load (seconds,
    or minutes from a registry) passed the same check, and one of them failed after loading (uvicorn's exit 3)."""
    import httpx
    import uvicorn

    import fashion.serving.app

    load, servers, second = fashion.serving.app.create_app, [], []

    def load_while_a_second_server_starts(*args, **kwargs):
        if second:
            pytest.fail("a second server on the same port got as far as loading its model")
        with pytest.raises(SystemExit) as refused:
            second.append("started")
            serve_main([f"bundle={trained.bundle}", f"port={port}", "review_queue=false"])
        second.append(refused.value.code)
        return load(*args, **kwargs)

    def run(server: uvicorn.Server, sockets) -> None:
        servers.append(server)
        original_run(server, sockets=sockets)

    original_run = uvicorn.Server.run
    monkeypatch.setattr(fashion.serving.app, "create_app", load_while_a_second_server_starts)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    with socket.socket() as probe:   # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serving = threading.Thread(target=serve_main, args=([f"bundle={trained.bundle}", f"port={port}", "review_queue=false",
                                                         "log_level=warning"],))
    serving.start()
    try:
        while not (servers and servers[0].started) and serving.is_alive():
            time.sleep(0.05)
        assert second == ["started", 2]
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"
    finally:
        if servers:
            servers[0].should_exit = True
        serving.join(timeout=30)
    assert not serving.is_alive()
    err = capsys.readouterr().err
    assert f"fashion-serve: cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert f"fashion-serve: serving on http://127.0.0.1:{port} (Ctrl+C stops)" in err


def test_ctrl_c_stops_the_server_quietly(trained, tmp_path):
    """uvicorn raises the interrupt again once it has shut down; `uvicorn.run` kept it quiet, a server run on
    our own socket printed a KeyboardInterrupt traceback at every Ctrl+C."""
    import signal
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-m", "fashion.serve", f"bundle={trained.bundle}", "port=0", "review_queue=false"],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or "Application startup complete" not in lines[-1]:
            lines.append(server.stderr.readline())
            assert lines[-1], "".join(lines)   # the server ended before it started
        server.send_signal(signal.SIGINT)
        _, rest = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0 and "Traceback" not in rest and "Finished server process" in rest, rest


def test_a_port_another_server_holds_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """uvicorn found it only after the model had loaded, and exited 3 with its own log line."""
    import fashion.serving.app

    monkeypatch.setattr(fashion.serving.app, "create_app", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            serve_main([f"bundle={tmp_path / 'bundle'}", f"port={port}", "review_queue=false"])
    assert exit_.value.code == 2
    assert f"fashion-serve: cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
