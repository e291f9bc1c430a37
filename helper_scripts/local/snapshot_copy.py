"""Copying a snapshot shared by another account, in moto, as AWS answers.

moto 5.2.5's CopySnapshot looks for the source only in the caller's own account, ignores
`Encrypted`, and gives the copy the source's encryption whatever `KmsKeyId` says; its
ModifySnapshotAttribute shares any snapshot. `patch()` makes them answer by the rules of the API
reference and the EBS user guide, for what the evidence-copy step calls
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CopySnapshot.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifySnapshotAttribute.html,
https://docs.aws.amazon.com/ebs/latest/userguide/ebs-modifying-snapshot-permissions.html):

- CopySnapshot finds the source in `SourceRegion` of the caller's account, or of another account
  that shared it with the caller (`createVolumePermission` naming the caller's account, or the
  group `all`); a snapshot the caller cannot see is `InvalidSnapshot.NotFound`, as AWS answers for
  one not shared.
- `KmsKeyId` requires `Encrypted=true` (`InvalidParameterDependency`; the API reference states the
  rule, not the code); `Encrypted` cannot be false. The copy is encrypted when asked or when its
  source is, with `KmsKeyId` (else the account's default key).
- ModifySnapshotAttribute takes the structured `CreateVolumePermission.Add`/`.Remove` lists (moto
  reads only the older `OperationType` with `UserId.N`/`UserGroup.N`), and refuses to share a
  snapshot encrypted with the account's AWS managed key (`alias/aws/ebs`) with another account
  (`OperationNotPermitted`; the code is not in the API reference), and to make an encrypted
  snapshot public.

Whether the caller may use the source's KMS key is not modelled (moto enforces no key policy):
on AWS a copy refused for it ends in the `error` state with a `StateMessage`.
"""

from __future__ import annotations


def patch() -> None:
    from moto.core.responses import ActionResult, EmptyResult
    from moto.ec2.exceptions import InvalidParameterDependency, InvalidSnapshotIdError, OperationNotPermitted
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.elastic_block_store import EBSBackend, Snapshot
    from moto.ec2.responses import EC2Response
    from moto.ec2.utils import random_snapshot_id

    if getattr(EC2Response, "_ec2_quarantine_snapshot_copy", False):
        return

    def visible_source(caller: str, snapshot_id: str, region: str):
        own = ec2_backends[caller][region].snapshots.get(snapshot_id)
        if own is not None:
            return own
        for account, regions in list(ec2_backends.items()):
            if account == caller or region not in regions:
                continue
            snap = regions[region].snapshots.get(snapshot_id)
            if snap is not None and (caller in snap.create_volume_permission_userids or "all" in snap.create_volume_permission_groups):
                return snap
        raise InvalidSnapshotIdError()

    def copy_snapshot(self) -> ActionResult:
        source_id = self._get_param("SourceSnapshotId")
        source_region = self._get_param("SourceRegion") or self.region
        description = self._get_param("Description")
        encrypted = str(self._get_param("Encrypted", "false")).lower() == "true"
        kms_key_id = self._get_param("KmsKeyId")
        tags = self._parse_tag_specification().get("snapshot", {})
        self.error_on_dryrun()
        if kms_key_id and not encrypted:
            raise InvalidParameterDependency("KmsKeyId", "Encrypted")
        backend = self.ec2_backend
        source = visible_source(backend.account_id, source_id, source_region)
        encrypted = encrypted or source.encrypted
        if encrypted and not kms_key_id:
            kms_key_id = backend.default_kms_key_id or backend._create_default_encryption_key()
        snapshot = Snapshot(
            backend,
            random_snapshot_id(),
            volume=source.volume,
            description=description,
            encrypted=encrypted,
            kms_key_id=kms_key_id if encrypted else None,
        )
        backend.snapshots[snapshot.id] = snapshot
        snapshot.add_tags(tags)
        return ActionResult({"SnapshotId": snapshot.id, "Tags": snapshot.tag_set})

    original_add = EBSBackend.add_create_volume_permission

    def add_create_volume_permission(self, snapshot_id: str, user_ids: list[str], groups: list[str]) -> None:
        snapshot = self.get_snapshot(snapshot_id)
        if snapshot.encrypted and groups:
            raise OperationNotPermitted("Encrypted snapshots cannot be made public.")
        if snapshot.encrypted and user_ids and snapshot.kms_key_id and aws_managed(self, snapshot.kms_key_id):
            raise OperationNotPermitted("Snapshots encrypted with the AWS managed key (alias/aws/ebs) cannot be shared.")
        return original_add(self, snapshot_id, user_ids=user_ids, groups=groups)

    def aws_managed(backend, key_id: str) -> bool:
        """Whether `key_id` is the account's `alias/aws/ebs` (moto marks it customer managed)."""
        from moto.kms import kms_backends

        kms = kms_backends[backend.account_id][backend.region_name]
        if not kms.alias_exists("alias/aws/ebs"):
            return False
        managed = kms.describe_key("alias/aws/ebs")
        return key_id in (managed.arn, managed.id)

    original_modify = EC2Response.modify_snapshot_attribute

    def modify_snapshot_attribute(self):
        changes = self._get_param("CreateVolumePermission") or {}
        if isinstance(changes, dict) and (changes.get("Add") or changes.get("Remove")):
            snapshot_id = self._get_param("SnapshotId")
            self.error_on_dryrun()
            for operation, items in (("Add", changes.get("Add") or []), ("Remove", changes.get("Remove") or [])):
                users = [i["UserId"] for i in items if i.get("UserId")]
                groups = [i["Group"] for i in items if i.get("Group")]
                if users or groups:
                    change = (
                        self.ec2_backend.add_create_volume_permission
                        if operation == "Add"
                        else self.ec2_backend.remove_create_volume_permission
                    )
                    change(snapshot_id, user_ids=users, groups=groups)
            return EmptyResult()
        return original_modify(self)

    EC2Response.copy_snapshot = copy_snapshot
    EC2Response.modify_snapshot_attribute = modify_snapshot_attribute
    EBSBackend.add_create_volume_permission = add_create_volume_permission
    EC2Response._ec2_quarantine_snapshot_copy = True
