"""deploy.sh's argument handling and its messages when tools or credentials are missing.

Never calls AWS: the script runs from a copy of helper_scripts/ (so it finds no project tools)
with a PATH holding only the system's basic commands and, where a test wants them, stand-ins for
`aws`, `sam` and `cargo-lambda` that record how they were called.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "helper_scripts", tmp_path / "helper_scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "template.yaml", tmp_path / "template.yaml")
    (tmp_path / "bin").mkdir()
    return tmp_path


def stand_in(project: Path, name: str, script: str) -> None:
    path = project / "bin" / name
    path.write_text("#!/bin/bash\n" + f'echo "{name} $*" >> "{project}/calls.log"\n' + script + "\n")
    path.chmod(0o755)


def aws_with_credentials(project: Path) -> None:
    stand_in(
        project,
        "aws",
        """case "$1 $2" in
  "sts get-caller-identity") echo "arn:aws:iam::111122223333:user/responder" ;;
  "configure get") exit 1 ;;
  "cloudformation describe-stacks") echo "StateMachineArn arn:aws:states:eu-west-1:111122223333:stateMachine:x" ;;
esac""",
    )


def deploy_sh(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {
        "PATH": f"{project / 'bin'}:/usr/bin:/bin",
        "HOME": str(project),
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(project / "helper_scripts" / "deploy.sh"), *args],
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def calls(project: Path) -> list[str]:
    log = project / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_without_arguments_it_prints_usage(project):
    r = deploy_sh(project)
    assert r.returncode == 2
    assert "deploy.sh local" in r.stdout and "deploy.sh nuke" in r.stdout


def test_an_unknown_subcommand_is_refused(project):
    assert deploy_sh(project, "destroy-everything").returncode == 2


def test_a_bad_threshold_is_refused_before_anything_runs(project):
    r = deploy_sh(project, "deploy", "--severity-threshold", "11", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "from 0 to 10" in r.stderr
    assert calls(project) == []


def test_missing_sam_cli_is_named(project):
    r = deploy_sh(project, "deploy", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "AWS SAM CLI is not installed" in r.stderr


def test_missing_aws_cli_is_named(project):
    stand_in(project, "sam", "exit 0")
    r = deploy_sh(project, "deploy", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "AWS CLI is not installed" in r.stderr


def test_missing_credentials_are_named(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "aws", 'echo "Unable to locate credentials. You can configure credentials by running aws configure." >&2; exit 255')
    r = deploy_sh(project, "deploy", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "no usable AWS credentials" in r.stderr
    assert "Unable to locate credentials" in r.stderr
    assert not any(c.startswith("sam ") for c in calls(project)), "nothing was built or deployed"


def test_a_wrong_region_is_refused(project):
    stand_in(project, "sam", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy", "--region", "mars-north")
    assert r.returncode != 0
    assert "not an AWS region name" in r.stderr


def test_no_region_at_all_is_named(project):
    stand_in(project, "sam", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy")
    assert r.returncode != 0
    assert "no region" in r.stderr


def test_deploy_builds_and_deploys_with_the_parameters(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(
        project, "deploy", "--region", "eu-west-1", "--stack-name", "ir-test",
        "--alert-email", "soc@example.com", "--severity-threshold", "5.5",
    )
    assert r.returncode == 0, r.stderr
    sam = [c for c in calls(project) if c.startswith("sam ")]
    assert sam[0].startswith("sam build --beta-features")
    deploy = sam[1]
    for part in ("--stack-name ir-test", "--region eu-west-1", "--capabilities CAPABILITY_IAM",
                 "--parameter-overrides AlertEmail=soc@example.com SeverityThreshold=5.5"):
        assert part in deploy, deploy


def test_environment_variables_configure_deploy(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy", env={"AWS_REGION": "ap-southeast-2", "STACK_NAME": "from-env", "SEVERITY_THRESHOLD": "8"})
    assert r.returncode == 0, r.stderr
    deploy = [c for c in calls(project) if c.startswith("sam deploy")][0]
    assert "--stack-name from-env" in deploy and "--region ap-southeast-2" in deploy
    assert "SeverityThreshold=8" in deploy and "AlertEmail" not in deploy


def test_deploy_in_several_regions_deploys_one_stack_per_region(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy", "--regions", "eu-west-1,us-east-2")
    assert r.returncode == 0, r.stderr
    sam = [c for c in calls(project) if c.startswith("sam ")]
    assert [c for c in sam if c.startswith("sam build")] == [sam[0]], "one build for every region"
    deploys = [c for c in sam if c.startswith("sam deploy")]
    assert len(deploys) == 2
    assert "--region eu-west-1" in deploys[0] and "--region us-east-2" in deploys[1]


def test_organization_parameters_reach_the_stack(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(
        project, "deploy", "--region", "eu-west-1", "--member-role-name", "ec2-quarantine-member",
        "--external-id", "s3cr3t-external", "--allow-accounts", "111111111111,222222222222",
    )
    assert r.returncode == 0, r.stderr
    deploy = [c for c in calls(project) if c.startswith("sam deploy")][0]
    assert "MemberRoleName=ec2-quarantine-member MemberRoleExternalId=s3cr3t-external" in deploy
    assert "MemberAccountsAllow=111111111111,222222222222" in deploy


def test_a_member_role_without_external_id_is_refused(project):
    r = deploy_sh(project, "deploy", "--region", "eu-west-1", "--member-role-name", "ec2-quarantine-member")
    assert r.returncode != 0
    assert "needs --external-id" in r.stderr


def test_a_malformed_account_list_is_refused(project):
    r = deploy_sh(project, "deploy", "--region", "eu-west-1", "--deny-accounts", "1234")
    assert r.returncode != 0
    assert "12-digit" in r.stderr
