"""Entry point of the `edgefleet` command: every EdgefleetError becomes one line and exit code 2.

Command modules register themselves on the shared app when imported; each imports its heavy wing
(cloud service, torch) inside the command functions, never at module level.
"""

from __future__ import annotations

import sys

from edgefleet.cli import (
    bundle_commands,  # noqa: F401 - registers keys, sign, inspect, verify, predict, bench
    capture_commands,  # noqa: F401 - registers capture settings|list
    cloud_commands,  # noqa: F401 - registers cloud up, token, migrate, service, ...
    compile_commands,  # noqa: F401 - registers compile
    compress_commands,  # noqa: F401 - registers compress
    dataset_commands,  # noqa: F401 - registers dataset create|list|show|export
    enroll_commands,  # noqa: F401 - registers enroll-token create|list|revoke, device enroll, device register
    fleet_commands,  # noqa: F401 - registers device run, sim, push, drift, alerts
    import_commands,  # noqa: F401 - registers import
    loop_commands,  # noqa: F401 - registers loop stage evaluate
    loop_freshness,  # noqa: F401 - registers loop stage freshness
    loop_run,  # noqa: F401 - registers loop run, loop watch, loop status
    performance_commands,  # noqa: F401 - registers performance
    rollout_commands,  # noqa: F401 - registers deploy, rollout status|approve|abort|list
    webhook_commands,  # noqa: F401 - registers webhook add|list|remove|deliveries
    windows_commands,  # noqa: F401 - registers windows
)
from edgefleet.cli.app import app, err_console
from edgefleet.core import config
from edgefleet.core.errors import EdgefleetError


def main() -> None:
    """Typer reports its own usage errors (exit 2); ours become one line and exit code 2."""
    try:
        app()  # standalone mode: exits through SystemExit, which passes the handlers below
    except EdgefleetError as err:
        err_console.print(f"error: {err}", markup=False, emoji=False, highlight=False,
                          soft_wrap=True)  # one line, any width; no :name: emoji codes ("module:train")
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("aborted", markup=False)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence against a traceback
        if config.debug():
            raise
        err_console.print(f"internal error: {type(err).__name__}: {err} (set {config.DEBUG_ENV}=1 for the traceback)",
                          markup=False, emoji=False, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
