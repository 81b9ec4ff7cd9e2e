"""Where stacks run: targets (Docker engines) with their encrypted credentials, and the compose policy that
says what a compose document may ask of a target's host."""
