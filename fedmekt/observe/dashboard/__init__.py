"""A read-only web page of a running federation, for the lab server (``fedmekt dashboard``).

:mod:`fedmekt.observe.dashboard.live` keeps a :class:`~fedmekt.observe.live_view.FederationView` current
from the broker (it only subscribes); :mod:`fedmekt.observe.dashboard.server` serves ``page.html`` and
``/api/state`` with the standard library, so a lab server needs nothing beyond the base install.
"""
