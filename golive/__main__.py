"""``python -m golive`` and the ``golive`` console script."""

from __future__ import annotations

import sys

from golive.server import main as _serve


def main() -> None:
    sys.exit(_serve())


if __name__ == "__main__":
    main()
