"""Scoring a catalogue: a manifest in, Parquet/CSV/JSON lines out, bad rows kept as error rows,
an interrupted job resumed without redoing finished rows, and Spark giving the same rows."""

import bz2
import glob
import gzip
import json
import lzma
import os
import re

import pandas as pd
import pytest

from fashion.predict import expand_inputs, main
from tests.conftest import SAMPLE, mlflow_store

IMAGES = sorted((SAMPLE / "images").glob("*.jpg"))


def manifest_with_bad_rows(tmp_path, n: int = 10):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    paths = [str(p) for p in IMAGES[:n]] + [str(broken), str(tmp_path / "missing.jpg")]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": paths, "sku": range(len(paths))}).to_csv(manifest, index=False)
    return manifest, paths


def test_a_manifest_becomes_parquet_with_error_rows_for_bad_images(trained, tmp_path, capsys):
    manifest, paths = manifest_with_bad_rows(tmp_path)
    out = tmp_path / "tags"
    assert main([f"bundle={trained.bundle}", f"manifest={manifest}", "format=parquet", f"output={out}"]) == 1
    table = pd.read_parquet(out)
    assert table["path"].tolist() == paths                               # every row, in manifest order
    errors = table.set_index("path")["error"]
    assert errors[paths[-2]].startswith("cannot decode image") and "No such file" in errors[paths[-1]]
    assert errors[paths[:-2]].isna().all() and table["articleType"].notna().sum() == len(paths) - 2
    assert set(table["articleType_status"].dropna()) <= {"accepted", "needs_review"}
    assert "12 rows written, 2 of them errors" in capsys.readouterr().err


@pytest.mark.parametrize("format", ["parquet", "csv", "jsonl"])
def test_an_interrupted_job_resumes_without_redoing_finished_rows(trained, tmp_path, monkeypatch, format):
    import fashion.inference.batch as batch_module

    manifest, paths = manifest_with_bad_rows(tmp_path)
    out = tmp_path / ("tags" if format == "parquet" else f"tags.{format}")
    first = tmp_path / "first.csv"
    pd.read_csv(manifest).head(6).to_csv(first, index=False)           # the job "died" after 6 rows
    assert main([f"bundle={trained.bundle}", f"manifest={first}", f"format={format}", f"output={out}"]) == 0
    if format != "parquet":   # and in the middle of writing a 7th
        with out.open("a") as handle:
            handle.write('{"path": "half a line' if format == "jsonl" else "/half/a/row.jpg,Men")
    else:
        (out / ".part-00001.parquet.tmp").write_bytes(b"PAR1 unfinished")
    scored = []
    original = batch_module.score_paths
    monkeypatch.setattr(batch_module, "score_paths", lambda p, files, *args: (scored.extend(files), original(p, files, *args))[1])
    assert main([f"bundle={trained.bundle}", f"manifest={manifest}", f"format={format}", f"output={out}", "resume=true"]) == 1
    assert scored == paths[6:]                                           # only what was not finished
    if format == "parquet":
        rows = pd.read_parquet(out)
    elif format == "csv":
        rows = pd.read_csv(out)
    else:
        rows = pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])
    assert sorted(rows["path"]) == sorted(paths)                          # each once, the half-written one gone


@pytest.mark.parametrize("format,foreign", [("jsonl", b'{"sku": 1}\n5\nnot json'), ("csv", b"sku,name\n1,a\n2,b"),
                                            ("parquet", b"not a parquet file")])
def test_resuming_into_a_file_the_tool_did_not_write_stops_and_leaves_it_as_it_was(trained, tmp_path, capsys,
                                                                                    format, foreign):
    """A wrong output= with resume=true: one line, exit 2, and not a byte of the user's file changed (the
    incomplete-last-line repair only runs once the rest has read as this tool's output)."""
    out = tmp_path / ("tags" if format == "parquet" else f"tags.{format}")
    target = out / "part-00000.parquet" if format == "parquet" else out
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(foreign)
    assert main([f"bundle={trained.bundle}", str(IMAGES[0]), f"format={format}", f"output={out}", "resume=true"]) == 2
    assert f"cannot resume from {out}: it is not a {format} output of fashion-predict" in capsys.readouterr().err
    assert target.read_bytes() == foreign


@pytest.mark.parametrize("format", ["parquet", "csv"])
def test_a_repeated_command_neither_duplicates_nor_replaces_rows_unasked(trained, tmp_path, capsys, format):
    """Run twice without resume=true, a Parquet folder got every row twice and a file lost its rows. Now the
    second run is refused, overwrite=true replaces, and resuming with another model or top_k is refused
    before a row is added, so one table never mixes two models."""
    manifest, paths = manifest_with_bad_rows(tmp_path, n=4)
    out = tmp_path / ("tags" if format == "parquet" else "tags.csv")
    command = [f"bundle={trained.bundle}", f"manifest={manifest}", f"format={format}", f"output={out}"]
    read = pd.read_parquet if format == "parquet" else pd.read_csv
    assert main(command) == 1
    first = read(out)
    capsys.readouterr()
    for extra, refusal in (([], f"{out} already holds rows: resume=true scores only the paths it lacks, overwrite=true"),
                           (["resume=true", "top_k=2"], f"cannot resume {out}: its rows were written with other settings (top_k 3 -> 2)"),
                           ([f"checkpoint={trained.checkpoint}", "resume=true"], "(model 'bundle sha256 "),
                           (["resume=true", "overwrite=true"], "give one")):
        if extra and extra[0].startswith("checkpoint="):
            args = [a for a in command if not a.startswith("bundle=")] + extra
        else:
            args = command + extra
        assert main(args) == 2
        assert refusal in capsys.readouterr().err
        pd.testing.assert_frame_equal(read(out), first)
    assert main(command + ["overwrite=true", "top_k=2"]) == 1
    again = read(out)
    assert again["path"].tolist() == paths                                # each row once
    assert again["articleType_top_k"].dropna().str.count(":").eq(2).all()   # and from the new settings
    assert main(command + ["resume=true", "top_k=2"]) == 0 and "0 to score" in capsys.readouterr().err
    for hostile in ("[1, 2]", "not json"):   # a record someone else wrote: one line, and the rows stay
        (out / "_job.json" if format == "parquet" else out.with_name(out.name + ".job.json")).write_text(hostile)
        assert main(command + ["resume=true", "top_k=2"]) == 2
        assert f"cannot resume from {out}: it is not a {format} output of fashion-predict" in capsys.readouterr().err
        assert read(out)["path"].tolist() == paths
    assert main([f"bundle={trained.bundle}", f"manifest={manifest}", "resume=true"]) == 2   # no output= to resume
    assert "resume=true needs output=" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_and_a_new_folder_is_made(trained, tmp_path, capsys):
    assert main([f"bundle={trained.bundle}", str(IMAGES[0]), "format=csv", f"output={tmp_path}"]) == 2
    assert f"cannot write {tmp_path}: [Errno 21] Is a directory" in capsys.readouterr().err
    nested = tmp_path / "new" / "folder" / "tags.jsonl"
    assert main([f"bundle={trained.bundle}", str(IMAGES[0]), f"output={nested}"]) == 0
    assert json.loads(nested.read_text())["path"] == str(IMAGES[0])


def test_the_output_suffix_names_the_format_and_a_contradiction_or_a_missing_column_is_refused(trained, tmp_path, capsys):
    """`output=tags.csv` wrote JSON lines into tags.csv unless format=csv was given too."""
    tags = tmp_path / "tags.csv"
    assert main([f"bundle={trained.bundle}", str(IMAGES[0]), f"output={tags}"]) == 0
    assert pd.read_csv(tags)["path"].tolist() == [str(IMAGES[0])]
    assert main([f"bundle={trained.bundle}", str(IMAGES[0]), f"output={tmp_path / 'other.csv'}", "format=parquet"]) == 2
    assert "is named for csv, but format=parquet" in capsys.readouterr().err
    assert not (tmp_path / "other.csv").exists()
    assert main([f"bundle={trained.bundle}", str(IMAGES[0]), f"output={tmp_path / 'tags'}"]) == 0   # no suffix: JSON lines
    assert json.loads((tmp_path / "tags").read_text())["path"] == str(IMAGES[0])
    for other in ("tags.xlsx", "tags.json"):   # a format not written here: it held JSON lines
        assert main([f"bundle={trained.bundle}", str(IMAGES[0]), f"output={tmp_path / other}"]) == 2
        assert f"fashion-predict writes .csv, .parquet, .jsonl, .ndjson, not {other[4:]}" in capsys.readouterr().err
        assert not (tmp_path / other).exists()
    assert main([f"bundle={trained.bundle}", str(IMAGES[0]), f"output={tmp_path / 'tags.json'}", "format=jsonl"]) == 0

    for manifest in (tmp_path / "m.csv", tmp_path / "m.parquet"):
        frame = pd.DataFrame({"sku": [1], "image": [str(IMAGES[0])]})
        frame.to_csv(manifest, index=False) if manifest.suffix == ".csv" else frame.to_parquet(manifest)
        assert main([f"bundle={trained.bundle}", f"manifest={manifest}"]) == 2
        assert (f"cannot read the manifest {manifest}: no column 'path' (its columns: 'sku', 'image'); path_column=<name>"
                in capsys.readouterr().err)
        assert main([f"bundle={trained.bundle}", f"manifest={manifest}", "path_column=image", f"output={tmp_path / 'by_image.csv'}",
                     "overwrite=true"]) == 0
    semicolons = tmp_path / "semicolons.csv"   # a spreadsheet in a locale whose decimal mark is the comma
    semicolons.write_text(f"sku;path\n1;{IMAGES[0]}\n")
    assert main([f"bundle={trained.bundle}", f"manifest={semicolons}"]) == 2
    assert "(its columns: 'sku;path'): its fields are separated by ';', save it comma-separated" in capsys.readouterr().err


def test_a_malformed_manifest_line_is_refused_by_number_and_rows_without_a_path_are_said(trained, tmp_path, capsys):
    """pandas' `usecols` dropped a row's extra fields: an unquoted comma in a path scored its first half
    (`.../a` as a missing file) and the rest was lost without a word; rows with no path vanished unsaid."""
    comma = tmp_path / "red, blue.jpg"
    comma.write_bytes(IMAGES[0].read_bytes())
    out = tmp_path / "tags.csv"
    unquoted = tmp_path / "unquoted.csv"
    unquoted.write_text(f"sku,path\n1,{IMAGES[1]}\n2,{comma}\n")
    assert main([f"bundle={trained.bundle}", f"manifest={unquoted}", f"output={out}"]) == 2
    assert ("1 line(s) without the header's 2 fields (line 3 has 3); a path that holds a comma must be quoted"
            in capsys.readouterr().err)
    assert not out.exists()
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text(f'path\n"{IMAGES[1]}\n{IMAGES[2]}\n')
    assert main([f"bundle={trained.bundle}", f"manifest={unclosed}", f"output={out}"]) == 2
    assert f"cannot read the manifest {unclosed}: line 3: unexpected end of data" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.csv.gz"   # a spreadsheet's CSV in its code page: the line, not the decoder's block
    latin1.write_bytes(gzip.compress(f"path\n{IMAGES[1]}\n{IMAGES[2]}\n{tmp_path}/caf\u00e9.jpg\n".encode("latin-1")))
    assert main([f"bundle={trained.bundle}", f"manifest={latin1}", f"output={out}"]) == 2
    assert f"cannot read the manifest {latin1}: not UTF-8 text (line 4): save it as UTF-8" in capsys.readouterr().err

    quoted = tmp_path / "quoted.csv"
    pd.DataFrame({"sku": [1, 2, 3, 4], "path": [str(IMAGES[1]), str(comma), None, ""]}).to_csv(quoted, index=False)
    assert main([f"bundle={trained.bundle}", f"manifest={quoted}", f"output={out}"]) == 0
    assert pd.read_csv(out)["path"].tolist() == [str(IMAGES[1]), str(comma)]   # the whole path, scored
    assert "skipped 2 manifest row(s) with no 'path': line 4, line 5" in capsys.readouterr().err


def test_a_quoted_glob_walks_the_folders_it_matches_as_the_shell_expanded_one_does(tmp_path):
    """'catalogue/2024-*' quoted used to keep the files it matched and drop its folders unsaid: nothing to
    score from a glob the shell would have expanded to those folders, and fashion-predict walked."""
    for name in ["2024-01/a.jpg", "2024-02/sub/b.png", "2024-02/notes.txt", "2023-12/c.jpg", "2024-top.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    pattern = str(tmp_path / "2024-*")
    shell = sorted(glob.glob(pattern))
    expected = [tmp_path / n for n in ["2024-01/a.jpg", "2024-02/sub/b.png", "2024-top.jpg"]]
    assert expand_inputs([pattern]) == expand_inputs(shell) == (expected, [], {".txt": 1})
    assert expand_inputs([str(tmp_path / "**" / "*.jpg"), str(tmp_path / "none-*")])[:2] == (
        [tmp_path / n for n in ["2023-12/c.jpg", "2024-01/a.jpg", "2024-top.jpg"]], [str(tmp_path / "none-*")])

    # a Mac's copies (._a.jpg beside a.jpg, __MACOSX/._*) and hidden folders are left out of a walk, as by a glob
    for name in ["2024-01/._a.jpg", "2024-01/__MACOSX/._a.jpg", "2024-01/.thumbnails/a.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\x00\x05\x16\x07")   # AppleDouble's magic: not an image
    assert expand_inputs([str(tmp_path / "2024-01")]) == ([tmp_path / "2024-01/a.jpg"], [], {})
    assert expand_inputs([str(tmp_path / "2024-01/._a.jpg")])[:2] == ([tmp_path / "2024-01/._a.jpg"], [])   # named: taken


def test_files_a_walk_leaves_out_by_their_name_are_said(trained, tmp_path, capsys):
    """An iPhone's .heic photos in a catalogue folder were left out of the walk without a word: products missing
    from the tags, and the job exit 0."""
    for name in ("a.jpg", "sub/b.heic", "sub/c.HEIC", "styles.csv", "README", ".DS_Store"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(IMAGES[0].read_bytes())
    (tmp_path / "photos" / "images.d").mkdir()   # a folder is no file left out
    assert main([f"bundle={trained.bundle}", str(tmp_path / "photos")]) == 0
    assert ("fashion-predict: left out 4 file(s) of the folders that are not images by their name (.heic: 2, .csv: 1, "
            "no suffix: 1); images are .bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp") in capsys.readouterr().err


def test_lanes_and_loader_workers_change_nothing_but_speed(trained, tmp_path):
    """One lane, three lanes (batches decoded and scored on concurrent threads, onnxruntime at one
    thread each) and two loader processes write the same table, errors included, in input order."""
    manifest, _ = manifest_with_bad_rows(tmp_path, n=40)
    outputs = {}
    for lanes, workers in ((1, 0), (3, 0), (2, 2)):
        out = tmp_path / f"l{lanes}w{workers}.csv"
        main([f"bundle={trained.bundle}", f"manifest={manifest}", "format=csv", f"output={out}", f"lanes={lanes}",
              f"workers={workers}", "batch_size=4"])
        outputs[lanes, workers] = pd.read_csv(out)
    assert list(outputs[1, 0]["path"]) == list(pd.read_csv(manifest)["path"])
    assert outputs[1, 0]["error"].notna().sum() == 2
    pd.testing.assert_frame_equal(outputs[1, 0], outputs[3, 0])
    pd.testing.assert_frame_equal(outputs[1, 0], outputs[2, 2])


def test_spark_scores_the_manifest_like_fashion_predict(trained, tmp_path, capfd, monkeypatch):
    """Spark local[2] through the logged pyfunc (`mlflow.pyfunc.spark_udf`), row for row."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        if os.environ.get("FASHION_REQUIRE_SPARK"):
            pytest.fail("pyspark is not installed (pip install -e '.[spark]')")
        pytest.skip("the spark extra is not installed")
    import mlflow

    from fashion.inference.pyfunc import log_pyfunc
    from fashion.inference.spark import local_session, score_manifest

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    paths = [str(p) for p in IMAGES[:200]] + [str(broken), None, ""]   # no path: left out by both
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"path": paths}).to_parquet(manifest)
    unquoted = tmp_path / "unquoted.csv"   # fashion-predict refuses it (the test above); Spark's reader cut the path
    unquoted.write_text(f"sku,path\n1,{IMAGES[0]}\n2,{tmp_path}/red, blue.jpg\n")
    local = tmp_path / "local"
    main([f"bundle={trained.bundle}", f"manifest={manifest}", "format=parquet", f"output={local}"])
    mlflow_store(tmp_path, "spark")
    uri = log_pyfunc(trained.bundle)
    spark = local_session(2, "fashion-test")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)   # as a user's job starts; unset after
    capfd.readouterr()
    managers = []   # the executors' Python: what the caller asked for reaches MLflow (building one needs an index)
    spark_udf = mlflow.pyfunc.spark_udf
    monkeypatch.setattr(mlflow.pyfunc, "spark_udf", lambda *args, env_manager, **kwargs: (
        managers.append(env_manager), spark_udf(*args, env_manager="local", **kwargs))[1])
    try:
        errors = score_manifest(spark, uri, str(manifest), str(tmp_path / "spark"))
        pd.DataFrame({"path": paths[:2]}).to_parquet(tmp_path / "two.parquet")
        score_manifest(spark, uri, str(tmp_path / "two.parquet"), str(tmp_path / "spark_venv"), env_manager="virtualenv")
        assert managers == ["local", "virtualenv"]
        assert "Downloading artifacts" not in capfd.readouterr().err   # spark_udf's model download: no bars in a log
        with pytest.raises(Exception, match="already exists"):   # as fashion-predict, an existing output is kept
            score_manifest(spark, uri, str(manifest), str(tmp_path / "spark"))
        with pytest.raises(ValueError, match=re.escape(f"without the header's 2 fields ('2,{tmp_path}/red, blue.jpg'); a path that")):
            score_manifest(spark, uri, str(unquoted), str(tmp_path / "spark_csv"))
        semicolons = tmp_path / "semicolons.csv"   # Spark's refusal was a page of JVM stack trace in its log first
        semicolons.write_text(f"sku;path\n1;{IMAGES[0]}\n")
        with pytest.raises(ValueError, match=re.escape("no column 'path' (its columns: 'sku;path'): its fields are "
                                                       "separated by ';', save it comma-separated")):
            score_manifest(spark, uri, str(semicolons), str(tmp_path / "spark_csv"))
        assert "UNRESOLVED_COLUMN" not in capfd.readouterr().err
        latin1 = tmp_path / "latin1.csv"   # fashion-predict refuses it by line; Spark read the path with U+FFFD for é
        latin1.write_bytes(f"sku,path\n1,{tmp_path}/caf\xe9.jpg\n".encode("latin-1"))
        with pytest.raises(ValueError, match=re.escape(f"not UTF-8 text (a path read as '{tmp_path}/caf\ufffd.jpg')")):
            score_manifest(spark, uri, str(latin1), str(tmp_path / "spark_csv"))
        assert not (tmp_path / "spark_csv").exists()
        beside = tmp_path / "catalogue"   # relative paths beside the manifest, from elsewhere: an error row per product
        (beside / "images").mkdir(parents=True)
        (beside / "images" / IMAGES[0].name).write_bytes(IMAGES[0].read_bytes())
        (beside / "manifest.csv").write_text(f"path\nimages/{IMAGES[0].name}\n")
        with pytest.raises(ValueError, match="the manifest's paths are relative to where the job runs"):
            score_manifest(spark, uri, str(beside / "manifest.csv"), str(tmp_path / "spark_csv"))
        # a compressed CSV, or one with another suffix, is read as fashion-predict reads it (it was read as Parquet)
        from fashion.inference.spark import manifest_rows
        from fashion.predict import read_manifest
        text = f"sku,path\n1,{IMAGES[0]}\n2,\n3,{IMAGES[1]}\n"
        for name, compress in (("m.csv.gz", gzip.compress), ("m.csv.bz2", bz2.compress), ("m.txt", bytes)):
            (tmp_path / name).write_bytes(compress(text.encode()))
            assert [r[0] for r in manifest_rows(spark, str(tmp_path / name)).collect()] == read_manifest(str(tmp_path / name))[0]
        (tmp_path / "m.csv.xz").write_bytes(lzma.compress(text.encode()))
        with pytest.raises(ValueError, match=r"m\.csv\.xz: Spark reads a CSV manifest plain, \.gz or \.bz2, not \.xz"):
            manifest_rows(spark, str(tmp_path / "m.csv.xz"))
        # a Parquet path column of bytes is read as text, one of numbers refused, as fashion-predict does
        pd.DataFrame({"path": [str(IMAGES[0]).encode(), None]}).to_parquet(tmp_path / "bytes.parquet")
        assert [r[0] for r in manifest_rows(spark, str(tmp_path / "bytes.parquet")).collect()] == [str(IMAGES[0])]
        pd.DataFrame({"path": [10002, 10012]}).to_parquet(tmp_path / "ids.parquet")
        with pytest.raises(ValueError, match="ids.parquet: column 'path' holds bigint, not text: a manifest's paths are strings"):
            manifest_rows(spark, str(tmp_path / "ids.parquet"))
    finally:
        spark.stop()
        mlflow.set_tracking_uri(None)
    assert errors == 1, pd.read_parquet(tmp_path / "spark")["error"].dropna().head(3).tolist()
    expected = pd.read_parquet(local).set_index("path").sort_index()
    got = pd.read_parquet(tmp_path / "spark").set_index("path").sort_index()
    assert got.index.tolist() == expected.index.tolist()
    for column in got.columns:
        if column.endswith("_confidence"):
            assert (got[column] - expected[column]).abs().max() <= 1e-6, column
        elif column == "error":
            assert got[column].isna().tolist() == expected[column].isna().tolist()
        else:
            assert got[column].tolist() == expected[column].tolist(), column


def test_catalogue_rows_are_what_the_api_serves(trained, tmp_path):
    """fashion-predict writes a batch's tags as columns, without a Prediction object per tag: every value
    must still be the one `Predictor.predict` (the API, the pyfunc) serves for the same photo."""
    from fashion.inference.runtime import load_predictor

    manifest, paths = manifest_with_bad_rows(tmp_path, n=40)
    out = tmp_path / "tags.jsonl"
    main([f"bundle={trained.bundle}", f"manifest={manifest}", "format=jsonl", f"output={out}", "batch_size=8"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    predictor = load_predictor(bundle=trained.bundle, batch_size=8)
    served = predictor.predict([predictor.load(p) for p in paths[:-2]])
    assert [row["path"] for row in rows] == paths
    assert [row["predictions"] for row in rows[:-2]] == [{a: p.to_dict() for a, p in s.items()} for s in served]
    assert all(set(row) == {"path", "error"} for row in rows[-2:])


def test_fashion_predict_runs_torch_on_one_thread_and_gives_the_setting_back(trained, tmp_path, monkeypatch):
    """Beside onnxruntime's lanes, torch's own work runs on one thread (its OpenMP team would spin on the
    lanes' cores); a caller in the same process (a notebook, a benchmark, a training run) keeps its setting."""
    import torch

    from fashion.inference.predictor import Predictor

    threads_seen = []
    original = Predictor.tags
    monkeypatch.setattr(Predictor, "tags", lambda self, probs: (threads_seen.append(torch.get_num_threads()), original(self, probs))[1])
    manifest, _ = manifest_with_bad_rows(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        main([f"bundle={trained.bundle}", f"manifest={manifest}", "format=csv", f"output={tmp_path / 'tags.csv'}"])
        assert threads_seen and set(threads_seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_file_name_that_is_not_utf8_is_scored_and_named_with_escapes(trained, tmp_path, capsys):
    """A Latin-1 name from an old archive (Python holds it with surrogate escapes): CSV and Parquet could not encode
    it, which stopped the job at its batch, and at that batch again on every resume. Now it is scored and its row
    names it with \\x escapes, as do its Grad-CAM overlays; a resume finds it done."""
    folder = tmp_path / "photos"
    folder.mkdir()
    latin = os.fsdecode(bytes(folder) + b"/caf\xe9.jpg")
    for name in (latin, str(folder / "plain.jpg")):
        (folder / name).write_bytes(IMAGES[0].read_bytes())
    shown = f"{folder}/caf\\xe9.jpg"
    for format in ("csv", "parquet", "jsonl"):
        out = tmp_path / ("tags" if format == "parquet" else f"tags.{format}")
        assert main([f"bundle={trained.bundle}", str(folder), f"output={out}", f"format={format}"]) == 0
        assert f"1 file name(s) are not UTF-8 text; their rows name them with \\x escapes: {shown}" in capsys.readouterr().err
        rows = pd.read_parquet(out) if format == "parquet" else pd.read_csv(out) if format == "csv" else \
            pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])
        assert sorted(rows["path"]) == sorted([shown, str(folder / "plain.jpg")])
        assert main([f"bundle={trained.bundle}", str(folder), f"output={out}", f"format={format}", "resume=true"]) == 0
        assert "resuming: 2 already in" in capsys.readouterr().err
    explained = tmp_path / "explained.csv"
    assert main([f"bundle={trained.bundle}", str(folder), f"output={explained}", "explain=gender",
                 f"explain_dir={tmp_path / 'overlays'}"]) == 0
    overlays = pd.read_csv(explained).set_index("path")["gender_explanation"]
    assert overlays[shown] == str(tmp_path / "overlays" / "caf\\xe9_gender.png") and os.path.isfile(overlays[shown])


def test_a_parquet_manifest_of_paths_as_bytes_is_read_and_one_of_numbers_refused(trained, tmp_path, capsys):
    """A Parquet path column of bytes (BYTE_ARRAY without its UTF-8 annotation) made every row an error naming
    "b'photos/a.jpg'" as the file; one of ids or lists made as many error rows as the catalogue had products."""
    as_bytes = tmp_path / "bytes.parquet"
    pd.DataFrame({"path": [str(IMAGES[0]).encode(), None]}).to_parquet(as_bytes)
    out = tmp_path / "tags.csv"
    assert main([f"bundle={trained.bundle}", f"manifest={as_bytes}", f"output={out}"]) == 0
    assert pd.read_csv(out)["path"].tolist() == [str(IMAGES[0])]
    for values, kind in (([10002, 10012], "int64"), ([["a.jpg"], ["b.jpg"]], "list<element: string>")):
        manifest = tmp_path / f"{kind[:4]}.parquet"
        pd.DataFrame({"path": values}).to_parquet(manifest)
        assert main([f"bundle={trained.bundle}", f"manifest={manifest}"]) == 2
        assert f"column 'path' holds {kind}, not text: a manifest's paths are strings" in capsys.readouterr().err


def test_a_manifest_of_paths_beside_it_scored_from_elsewhere_is_refused_saying_where_they_are(trained, tmp_path, capsys,
                                                                                               monkeypatch):
    """Paths are taken from where the job runs (as Spark takes them): a manifest listing images/<id>.jpg beside it, scored
    from another folder, made an error row per product, each printed."""
    catalogue = tmp_path / "catalogue"
    (catalogue / "images").mkdir(parents=True)
    for image in IMAGES[:2]:
        (catalogue / "images" / image.name).write_bytes(image.read_bytes())
    pd.DataFrame({"path": [f"images/{image.name}" for image in IMAGES[:2]]}).to_csv(catalogue / "manifest.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert main([f"bundle={trained.bundle}", "manifest=catalogue/manifest.csv"]) == 2
    assert (f"the manifest's paths are relative to where the job runs ({tmp_path}), and none of its first 2 is there, but "
            f"each is beside the manifest (catalogue/images/{IMAGES[0].name}): run from {catalogue}") in capsys.readouterr().err
    monkeypatch.chdir(catalogue)
    assert main([f"bundle={trained.bundle}", "manifest=manifest.csv"]) == 0


def test_a_manifest_of_uris_is_read_through_fsspec_and_a_missing_protocol_package_is_the_row_error(trained, tmp_path):
    """A catalogue in an object store: `s3://...` was read as the local path 's3:/...' (No such file), every row an
    error. URIs are read through fsspec (its in-memory filesystem stands in for a bucket here); a protocol whose
    package is not installed, or that no package gives, is that row's error, named."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/photo.jpg", IMAGES[0].read_bytes())
    # a web address is not fetched (the pyfunc takes paths from its clients), nor one chained on with `::`
    uris = ["memory://bucket/photo.jpg", IMAGES[1].as_uri(), "memory://bucket/gone.jpg", "nosuchstore://bucket/a.jpg",
            "http://127.0.0.1:9/photo.jpg", f"{IMAGES[1].as_uri()}::http://127.0.0.1:9/photo.jpg"]
    manifest, out = tmp_path / "manifest.csv", tmp_path / "tags.csv"
    pd.DataFrame({"path": [*uris, str(IMAGES[0])]}).to_csv(manifest, index=False)
    try:
        assert main([f"bundle={trained.bundle}", f"manifest={manifest}", f"output={out}"]) == 1
        assert main([f"bundle={trained.bundle}", uris[0], f"output={tmp_path / 'one.csv'}"]) == 0   # named on its own
        assert pd.read_csv(tmp_path / "one.csv")["path"].tolist() == [uris[0]]
    finally:
        memory.rm("/bucket", recursive=True)
    table = pd.read_csv(out).set_index("path")
    assert table.loc[uris[:2], "error"].isna().all()
    assert table.loc[uris[0], "articleType"] == table.loc[str(IMAGES[0]), "articleType"]   # the same photo, the same tags
    assert f"No such file or directory: '{uris[2]}'" in table.loc[uris[2], "error"]
    for uri in uris[3:]:
        assert table.loc[uri, "error"] == f"cannot read {uri}: only storage is read (abfs, abfss, adl, az, file, gcs, gs, " \
                                          "hdfs, memory, s3, s3a), not a web address or another scheme: download the images first"
    explained = tmp_path / "explained.csv"   # Grad-CAM's own decoding took each path as a local Path: file:/... (gone)
    pd.DataFrame({"path": [uris[1]]}).to_csv(explained, index=False)
    assert main([f"bundle={trained.bundle}", f"manifest={explained}", f"output={tmp_path / 'e.jsonl'}", "explain=articleType",
                 f"explain_dir={tmp_path / 'overlays'}"]) == 0
    assert (tmp_path / "overlays" / f"{IMAGES[1].stem}_articleType.png").is_file()


def test_relative_paths_are_refused_for_a_cluster_whose_executors_take_them_from_their_own_folders():
    """On a cluster each executor reads a relative path from its container's working directory: every row an error."""
    from fashion.inference.spark import unreadable_from_executors

    paths = ["images/1.jpg", "s3://bucket/2.jpg"]
    assert "relative paths ('images/1.jpg', ...) are read from each executor's working directory on the cluster " \
           "(yarn)" in unreadable_from_executors("yarn", "hdfs:///catalogue.csv", paths)
    assert unreadable_from_executors("spark://head:7077", "m.csv", ["/mnt/catalogue/1.jpg", "s3://bucket/2.jpg"]) is None
    assert unreadable_from_executors("local[2]", "m.csv", paths) is None   # as fashion-predict judges them
