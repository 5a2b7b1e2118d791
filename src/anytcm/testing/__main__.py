"""`python -m anytcm.testing`: run the reference manager in the foreground."""

from __future__ import annotations

from ._manager.main import main

if __name__ == "__main__":
    main()
