"""Executors: datatrove executors that run our segments (local processes; Dask in its own module)."""
