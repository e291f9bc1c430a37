"""EBS Snapshot Lock in moto, answering as AWS does for what the responder calls.

moto 5.2.5 has no LockSnapshot or DescribeLockedSnapshots (its coverage list leaves them
unchecked; a call raises NotImplementedError), and neither has MiniStack. `patch()` adds them to
moto's EC2, for the local runs (in-process) and every moto server (`python -m local.moto_server`),
with the rules of the API reference
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_LockSnapshot.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeLockedSnapshots.html,
https://docs.aws.amazon.com/ebs/latest/userguide/snapshot-lock-considerations.html):

- LockSnapshot: `LockMode` governance or compliance; exactly one of `LockDuration` (1 to 36,500
  days) and `ExpirationDate`; `CoolOffPeriod` (1 to 72 hours) only in compliance mode; an
  unknown snapshot is `InvalidSnapshot.NotFound`. Locking again changes the lock as AWS allows:
  governance and compliance within its cooling-off period any way; compliance after it, only a
  longer duration and no cooling-off period.
- DescribeLockedSnapshots: the locks of the snapshots named (or of all), their `lockState`
  (governance, compliance-cooloff, compliance, expired) computed from the clock.
- DeleteSnapshot on a snapshot whose lock holds is refused. The code AWS returns is not in the
  API reference; `SnapshotLocked` here (the considerations page says only that it cannot be
  deleted), so that a test that deletes evidence fails whatever the code.

Snapshots in moto are `completed` at once, so a lock's duration starts when it is set (AWS starts
it when a pending snapshot completes).
"""

from __future__ import annotations

import datetime

MAX_DAYS = 36_500


def patch() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError, InvalidParameterCombination
    from moto.ec2.models.elastic_block_store import EBSBackend
    from moto.ec2.responses import EC2Response

    if getattr(EC2Response, "_ec2_quarantine_snapshot_lock", False):
        return

    class InvalidParameterValue(EC2ClientError):
        def __init__(self, message: str):
            super().__init__("InvalidParameterValue", message)

    class SnapshotLocked(EC2ClientError):
        def __init__(self, snapshot_id: str):
            super().__init__("SnapshotLocked", f"The snapshot '{snapshot_id}' is locked and cannot be deleted.")

    def locks(backend) -> dict:
        if not hasattr(backend, "_ec2_quarantine_locks"):
            backend._ec2_quarantine_locks = {}
        return backend._ec2_quarantine_locks

    def now() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def state(lock: dict, at: datetime.datetime) -> str:
        if at >= lock["expires"]:
            return "expired"
        if lock["mode"] == "compliance":
            return "compliance-cooloff" if lock.get("cool_off_until") and at < lock["cool_off_until"] else "compliance"
        return "governance"

    def shown(snapshot_id: str, lock: dict, at: datetime.datetime) -> dict:
        out = {
            "SnapshotId": snapshot_id,
            "LockState": state(lock, at),
            "LockDuration": lock["days"],
            "LockCreatedOn": lock["created"],
            "LockExpiresOn": lock["expires"],
            "LockDurationStartTime": lock["created"],
        }
        if lock.get("cool_off_hours"):
            out.update(CoolOffPeriod=lock["cool_off_hours"], CoolOffPeriodExpiresOn=lock["cool_off_until"])
        return out

    def lock_snapshot(self) -> ActionResult:
        snapshot_id = self._get_param("SnapshotId")
        mode = self._get_param("LockMode")
        days = self._get_int_param("LockDuration")
        expiration = self._get_param("ExpirationDate")
        cool_off = self._get_int_param("CoolOffPeriod")
        self.error_on_dryrun()
        self.ec2_backend.get_snapshot(snapshot_id)  # InvalidSnapshot.NotFound
        if mode not in ("governance", "compliance"):
            raise InvalidParameterValue(f"Value ({mode}) for parameter LockMode is invalid.")
        if (days is None) == (expiration is None):
            raise InvalidParameterCombination("Specify either LockDuration or ExpirationDate, not both or neither.")
        at = now()
        if expiration is not None:
            expires = expiration if isinstance(expiration, datetime.datetime) else datetime.datetime.fromisoformat(str(expiration))
            expires = expires if expires.tzinfo else expires.replace(tzinfo=datetime.UTC)
            days = max(1, (expires - at).days)
        elif not 1 <= days <= MAX_DAYS:
            raise InvalidParameterValue(f"LockDuration must be from 1 to {MAX_DAYS} days.")
        else:
            expires = at + datetime.timedelta(days=days)
        if cool_off is not None and (mode != "compliance" or not 1 <= cool_off <= 72):
            raise InvalidParameterValue("CoolOffPeriod is 1 to 72 hours, in compliance mode only.")
        held = locks(self.ec2_backend)
        earlier = held.get(snapshot_id)
        # After a compliance lock's cooling-off period: only a longer lock, and no cooling-off period.
        if (
            earlier
            and state(earlier, at) == "compliance"
            and (mode != "compliance" or cool_off is not None or expires < earlier["expires"])
        ):
            raise InvalidParameterValue(
                "The snapshot is locked in compliance mode after its cooling-off period: only its lock duration can be increased."
            )
        lock = {
            "mode": mode,
            "days": days,
            "created": earlier["created"] if earlier else at,
            "expires": expires,
            "cool_off_hours": cool_off,
            "cool_off_until": at + datetime.timedelta(hours=cool_off) if cool_off else None,
        }
        held[snapshot_id] = lock
        return ActionResult(shown(snapshot_id, lock, at))

    def describe_locked_snapshots(self) -> ActionResult:
        wanted = self._get_param("SnapshotIds", [])
        at = now()
        held = locks(self.ec2_backend)
        found = [shown(i, lock, at) for i, lock in sorted(held.items()) if not wanted or i in wanted]
        for item in found:
            item["OwnerId"] = self.current_account
        return ActionResult({"Snapshots": found})

    original_delete = EBSBackend.delete_snapshot

    def delete_snapshot(self, snapshot_id: str):
        lock = locks(self).get(snapshot_id)
        if lock and state(lock, now()) != "expired":
            raise SnapshotLocked(snapshot_id)
        return original_delete(self, snapshot_id)

    EC2Response.lock_snapshot = lock_snapshot
    EC2Response.describe_locked_snapshots = describe_locked_snapshots
    EBSBackend.delete_snapshot = delete_snapshot
    EC2Response._ec2_quarantine_snapshot_lock = True
