"""Throwaway test hosts with a real systemd, for sockact's tests and demos (not shipped).

``sockact-lab up | list | down | image``; see :mod:`sockact_lab.lab` (hosts),
:mod:`sockact_lab.image` (their minimal Debian image) and :mod:`sockact_lab.aptproxy`
(their way to Debian's mirror).
"""
