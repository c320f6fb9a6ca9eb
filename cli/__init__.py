"""The `robopt` command-line client: the REST API from a terminal, in scripts and in CI.

It talks HTTP only (httpx); `robopt serve` is the one command that starts the server, and imports
the API for that alone.
"""
