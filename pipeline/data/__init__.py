"""Data in: the NIH data-entry CSV and box list, ingest to a manifest,
patient-level splits, and manifest validation (Great Expectations) with its report."""
