"""``sockact verify``: is this host right? The operator's host checks, run after a deploy.

A testinfra suite shipped in the wheel: ``sockact verify -i INVENTORY`` runs
:mod:`~sockact.controller.verify.checks` through pytest and pytest-testinfra (the extra
``sockact[verify]``) against every host the pattern matches, reads each host's deploy
record and checks the host against it, one check per test and instance.

- :mod:`~sockact.controller.verify.command`: the subcommand (flags, exit codes).
- :mod:`~sockact.controller.verify.plugin`: the pytest plugin (options, fixtures, hosts x
  instances).
- :mod:`~sockact.controller.verify.checks`: the checks themselves (``test_*``).
- :mod:`~sockact.controller.verify.facts`: what the checks read, parsed (deploy record,
  ``ss``, unit files, system call groups); no pytest or testinfra needed.

The host layout (paths, colors, admin ports, unit and sysctl names) comes from
:mod:`sockact.layout`.
"""
