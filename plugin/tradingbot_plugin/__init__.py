"""`kubectl tradingbot`: status, restart, stop/resume, the kill switch, positions and the
audit log, for people (SPEC §9). A program of its own: it talks to the API server and the
audit sidecar, never to the operator's internals."""
