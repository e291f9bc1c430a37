"""Baseline notify: one message to the security team's SNS topic."""

import json
import os

import boto3

sns = boto3.client("sns")


def handler(event, context):
    finding = event.get("event", {}).get("detail", {})
    subject = f"EC2 containment: {finding.get('type', 'finding')}"[:100]
    message_id = sns.publish(TopicArn=os.environ["ALERT_TOPIC_ARN"], Subject=subject, Message=json.dumps(event, indent=2))["MessageId"]
    return {"status": "done", "message_id": message_id}
