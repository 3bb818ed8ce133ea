"""Container runtimes the agent drives: Docker (local or over SSH) and an in-memory fake."""
