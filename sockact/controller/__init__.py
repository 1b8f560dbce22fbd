"""What an operator runs from a controller: ``sockact units render``, ``sockact probe``."""
