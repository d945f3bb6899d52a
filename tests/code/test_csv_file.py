"""A user's CSV in another encoding, or with a field over the csv module's
limit: named by file, line and byte, the other rows read."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pytest
import yaml

from pipeline.data.csv_file import DataEntryError, csv_file, csv_rows, first_non_utf8
from pipeline.data.folder import read_labels_csv
from tests.conftest import PROJECT_ROOT

HEADER = "path,labels,patient_id\n"


def latin1_labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes((HEADER + "a.png,Mass,1\nb.png,No Finding,2\nMünchen/c.png,Edema,3\n").encode("latin-1"))
    return path


def test_a_latin1_file_is_named_with_its_line_and_byte(tmp_path):
    path = latin1_labels(tmp_path)
    offset = path.read_bytes().index(b"\xfc")
    with pytest.raises(DataEntryError) as error:
        read_labels_csv(path)
    assert str(error.value) == (
        f"{path}: line 4: byte 0xfc at offset {offset} is not UTF-8: the file is in another encoding (Latin-1 or "
        f"Windows-1252, as Excel writes): save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > labels-utf8.csv")


def test_the_bad_byte_is_found_across_chunks_and_in_gzip(tmp_path):
    # "é" (2 bytes) straddling the 1 MiB chunk boundary is fine; the Latin-1 byte after it is not.
    body = b"x" * ((1 << 20) - 1) + "é\n".encode() + b"ok\n" + b"bad \xe9\n"
    plain, packed = tmp_path / "a.csv", tmp_path / "a.csv.gz"
    plain.write_bytes(body)
    packed.write_bytes(gzip.compress(body))
    expected = (3, body.index(b"\xe9\n"), 0xE9)
    assert first_non_utf8(plain) == expected == first_non_utf8(packed)
    (tmp_path / "good.csv").write_bytes("ünïcode\n".encode())
    assert first_non_utf8(tmp_path / "good.csv") is None


def test_a_field_over_the_limit_sets_its_row_aside_and_reading_goes_on(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(HEADER + "a.png,Mass,1\nb.png," + "x" * 200_000 + ",2\nc.png,Edema,3\n")
    frame, rejected = read_labels_csv(path)
    assert list(frame["path"]) == ["a.png", "c.png"]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (3, "unreadable row: field larger than field limit (131072) characters")]
    with csv_file(path) as reader:
        assert [line for line, _, _ in csv_rows(reader)] == [1, 2, 3, 4]


def test_ingest_and_cxr_evaluate_say_it_in_one_line(tmp_path):
    from pipeline.model.architectures import build_model

    root = tmp_path / "root"
    root.mkdir()
    latin1_labels(root)
    model = tmp_path / "model.keras"
    build_model("small_cnn", 64, "none").save(model)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["ingest"].update({"source": "folder", "root": str(root), "labels": "labels.csv"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    commands = {"ingest": [sys.executable, str(PROJECT_ROOT / "src" / "ingest.py")],
                "cxr": [sys.executable, "-m", "pipeline.serve.cli", "evaluate", str(root), "--labels",
                        str(root / "labels.csv"), "--model", str(model)]}
    for name, command in commands.items():
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert f"{name}: error: " in done.stderr and f"{root / 'labels.csv'}: line 4: byte 0xfc" in done.stderr, (
            done.stderr[-3000:])
