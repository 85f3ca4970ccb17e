"""The Dask backend: driver side (backend), worker side (worker), client choice (client)."""
