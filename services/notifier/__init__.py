"""The notifier service: emails the site, the patient and the referrer, once each."""

SERVICE = "notifier"
"""Its one name: its events' producer, its consumer group (``trialroute-<name>``), token audience, app."""
