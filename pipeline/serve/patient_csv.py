"""Patient metadata for `cxr predict --metadata`: each film's age, sex and
view from NIH's Data_Entry_2017.csv or the manifest. Apart from films.py so
that a registered model's serving code does not ship the data package."""
from __future__ import annotations

from pathlib import Path


def read_patient_metadata(path: Path | str, with_patient: bool = False) -> dict[str, dict]:
    """{image file name: {"age", "sex", "view"}} from NIH's Data_Entry_2017.csv
    (or the Kaggle sample's CSV) or any CSV with columns image_id (or path, as
    the folder source's labels CSV has), age, sex and view, such as the ingest
    stage's manifest.csv. With `with_patient`, also "patient_id" (as text)
    where the CSV has the column (`cxr monitor` moves a patient's films together)."""
    import pandas as pd

    from pipeline.data.csv_file import encoding_message
    from pipeline.data.nih import REQUIRED_COLUMNS, DataEntryError, read_data_entry

    path = Path(path)
    try:
        header = pd.read_csv(path, nrows=0).columns
        if REQUIRED_COLUMNS[0] in header:
            frame = read_data_entry(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "image_id" not in frame.columns and "path" in frame.columns:  # the folder source's labels CSV
                frame["image_id"] = [Path(name).name for name in frame["path"]]
            missing = [c for c in ("image_id", "age", "sex", "view") if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: no column {', '.join(missing)} (expected NIH's Data_Entry_2017.csv "
                                 f"or columns image_id, age, sex, view)")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read patient metadata: {encoding_message(path)}") from exc
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, DataEntryError) as exc:
        raise ValueError(f"{path}: cannot read patient metadata: {exc}") from exc
    rows = {str(row.image_id): {"age": row.age, "sex": row.sex, "view": row.view}
            for row in frame.itertuples(index=False)}
    if with_patient and "patient_id" in frame.columns:
        for image_id, patient in zip(frame["image_id"], frame["patient_id"]):
            rows[str(image_id)]["patient_id"] = str(patient)
    return rows
