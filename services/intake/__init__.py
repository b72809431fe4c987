"""The intake service: clinics' referrals, with patient identity, and their status timelines."""

SERVICE = "intake"
"""Its one name: its events' producer, its consumer group (``trialroute-<name>``), token audience, app."""
