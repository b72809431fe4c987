"""The site router service: screened referrals to the nearest study site with room; sites decide them."""

SERVICE = "site_router"
"""Its one name: its events' producer, its consumer group (``trialroute-<name>``), token audience, app."""
