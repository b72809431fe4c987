"""The eligibility service: pre-screens each revision of a referral against the trial's criteria."""

SERVICE = "eligibility"
"""Its one name: its events' producer, its consumer group (``trialroute-<name>``), token audience, app."""
