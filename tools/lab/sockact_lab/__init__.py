"""Throwaway test hosts with a real systemd, for sockact's tests and demos (not shipped).

``sockact-lab up | list | down``; see :mod:`sockact_lab.lab`.
"""
