"""Pipeline steps: each a plain function plus a thin Prefect task."""
