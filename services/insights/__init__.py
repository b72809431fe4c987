"""The insights service: the recruitment funnel, a read model of the referral events, for ops."""

SERVICE = "insights"
"""Its one name: its consumer group (``trialroute-<name>``), token audience, app."""
