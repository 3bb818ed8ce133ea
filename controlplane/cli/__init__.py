"""cpctl, the command-line client: one module per verb group, wired together in ``main``.

Commands parse and check their flags before any request (bad flags exit 2), talk to the API
through ``controlplane.client.Client``, and turn server errors into one ``error: ...`` line
on stderr with exit 1; waits that miss their goal exit 3.
"""
