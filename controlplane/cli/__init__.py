"""cpctl, the command-line client: one module per verb group, named in ``main`` and imported only
when its verb runs.

Commands parse and check their flags before any request (bad flags exit 2), talk to the API
through ``rest.RestClient`` (blocking, stdlib only: no aiohttp at start-up), and turn server
errors into one ``error: ...`` line on stderr with exit 1; waits that miss their goal exit 3.
"""
