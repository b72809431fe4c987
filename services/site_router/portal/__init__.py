"""The site coordinators' portal: server-rendered pages under ``/portal`` (queue, one referral, site
settings) over the site router's own commands and queries, signed in through ``shared.web``.

Routes in ``pages.py``, the forms' parsing in ``forms.py``, the patient's contact from intake in
``contact.py``, Jinja2 templates in ``templates/portal/``, one stylesheet in ``static/``. No script is
needed: every action is an HTML form (POST, CSRF token, then a redirect to a page with a flash message).
"""

PORTAL = "/portal"
