"""The commands' wiring: each module builds what one command needs from the config and runs it.

The CLI parses arguments and maps user errors to exit code 2; these modules are what it calls,
and what a Python user calls instead of the CLI. Nothing below imports them.
"""
