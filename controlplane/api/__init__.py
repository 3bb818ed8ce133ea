"""cp-apiserver: the aiohttp application (app.py), its handlers and its process entry point (server.py).

A package (not a namespace folder) so the layering contracts in ``make lint`` see its modules.
"""
