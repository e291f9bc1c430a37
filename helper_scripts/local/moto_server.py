"""moto's server with the harness's corrections (Security Hub as AWS answers: local.securityhub).

python -m local.moto_server -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import sys

from local import securityhub


def main() -> int:
    securityhub.patch()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
