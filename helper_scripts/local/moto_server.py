"""moto's server with the harness's corrections (Security Hub as AWS answers: local.securityhub;
EBS Snapshot Lock, which moto lacks: local.snapshot_lock; copies of snapshots another account
shared: local.snapshot_copy).

python -m local.moto_server -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import sys

from local import securityhub, snapshot_copy, snapshot_lock


def main() -> int:
    securityhub.patch()
    snapshot_lock.patch()
    snapshot_copy.patch()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
