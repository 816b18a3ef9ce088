"""Load benchmark of the service against a bare-FastAPI ceiling (see bench/README.md)."""
