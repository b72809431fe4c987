"""Pages people use, for every service: sign-in through the issuer (``signin``) and server-rendered
pages with one accessible layout (``pages``). See docs/sign-in.md."""

from shared.web.pages import PageError, PageForbidden, PageNotFound, error_page, keep_session, render
from shared.web.signin import (
    WebSignIn,
    WebSignInSettings,
    WebUser,
    csrf_protected,
    safe_next,
    sign_in_router,
    signed_in,
)

__all__ = [
    "PageError",
    "PageForbidden",
    "PageNotFound",
    "WebSignIn",
    "WebSignInSettings",
    "WebUser",
    "csrf_protected",
    "error_page",
    "keep_session",
    "render",
    "safe_next",
    "sign_in_router",
    "signed_in",
]
