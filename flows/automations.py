"""Automations that turn prefect-dintero's events into something a person sees.

``automations/dintero-session-expiring.yaml`` in the repository is this module's definition
with a placeholder block id; ``prefect-dintero automation --notification-block TYPE/NAME``
writes it with the id of your notification block, ready for
``prefect automation create --from-file``.
"""

from __future__ import annotations

from typing import Any

#: Stands for the notification block's id in the repository's copy of the automation.
PLACEHOLDER_BLOCK_ID = "00000000-0000-0000-0000-000000000000"

SUBJECT = (
    "Dintero login {{ event.payload.session_block }} ends in {{ event.payload.hours_left }} hours"
)
BODY = """\
The Dintero login session {{ event.payload.session_block }} (account \
{{ event.payload.account_id }}) ends at {{ event.payload.expires_at }} and cannot be renewed.
Syncs that read as this user fail after that.

Log in again: run the {{ event.payload.login_deployment }} deployment \
{% if event.payload.login_url %}({{ event.payload.login_url }}) {% endif %}and paste the \
URL you are redirected to into its resume form.
"""


def session_expiring_automation(block_document_id: str = PLACEHOLDER_BLOCK_ID) -> dict[str, Any]:
    """The automation: on ``dintero.session.expiring``, a notification through the block."""
    return {
        "name": "dintero-session-expiring",
        "description": (
            "A Dintero user session is about to end (a day, then an hour ahead): ask someone to "
            "run the dintero-login/manual deployment."
        ),
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Reactive",
            "expect": ["dintero.session.expiring"],
            "match": {"prefect.resource.id": "dintero.session.*"},
            "threshold": 1,
            "within": 0,
        },
        "actions": [
            {
                "type": "send-notification",
                "block_document_id": block_document_id,
                "subject": SUBJECT,
                "body": BODY,
            }
        ],
    }


def automation_yaml(block_document_id: str = PLACEHOLDER_BLOCK_ID) -> str:
    """The automation as YAML, multi-line text as literal blocks."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    return yaml.dump(
        session_expiring_automation(block_document_id),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=1000,
    )


#: The comment heading the repository's copy of the automation.
FILE_HEADER = """\
# On dintero.session.expiring (a day, then an hour before a user session that cannot be renewed
# ends), send a notification through your notification block, with the link to log in again.
# Replace block_document_id with your block's id, or write this file with it filled in:
#   prefect-dintero automation --notification-block slack-webhook/team --output automation.yaml
# then: prefect automation create --from-file automation.yaml
"""
