"""The reference manager: an independent implementation of the TCM server contract.

Everything in this folder imports only the standard library, third-party packages and this
folder itself, never the client (a test enforces it), so the manager catches the client's
mistakes instead of sharing them.
"""
